"""Pass types and light blocks share one registrar: a name stays with its first class."""

from __future__ import annotations

import pytest

from compress.blocks import build_block, names, register_block
from compress.passes import Pass, get_pass, register


def test_a_second_class_under_a_registered_name_is_refused():
    assert get_pass("finetune") is not None and names()  # the built-in modules are imported
    with pytest.raises(ValueError, match="pass type 'finetune' registered twice"):
        register("finetune")(type("Other", (Pass,), {}))
    with pytest.raises(ValueError, match="block 'elan2' registered twice"):
        register_block("elan2")(type("Other", (), {}))
    assert get_pass("finetune").type == "finetune" and "elan2" in names()
    assert build_block("elan2", 8, 8).block_name == "elan2"
