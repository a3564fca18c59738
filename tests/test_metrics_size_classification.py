"""Size counters, sparsity report and classification metrics."""

import numpy as np
import pytest
import torch
from torch import nn

from compress.metrics import classification as cm
from compress.metrics.size import count_macs, count_params, file_bytes, sparsity_report


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 4, 1))


def test_params_and_macs():
    net = _net()
    assert count_params(net) == 3 * 8 * 9 + 2 * 8 + 8 * 4 + 4
    macs = count_macs(net, torch.zeros(1, 3, 16, 16))
    conv_macs = 16 * 16 * (8 * 3 * 9 + 4 * 8)  # the convolutions dominate
    assert conv_macs <= macs <= conv_macs * 1.2
    assert not any(m._forward_hooks for m in net.modules())  # counter left the model untouched


def test_file_bytes(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"\0" * 1234)
    assert file_bytes(p) == 1234


def test_sparsity_report():
    net = _net()
    with torch.no_grad():
        net[0].weight[:4] = 0  # half the filters
        net[1].weight[:2] = 0
    rep = sparsity_report(net)
    assert rep["conv2d"]["0"] == pytest.approx(0.5)
    assert rep["conv2d"]["3"] == pytest.approx(0.0)
    assert rep["batchnorm2d"]["1"] == pytest.approx(0.25)
    weights = 8 * 27 + 8 + 4 * 8  # biases are not weights
    assert rep["overall"] == pytest.approx((4 * 27 + 2) / weights)


def test_classification_metrics():
    ref = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    cmp = ref.copy()
    cmp[3] = [0.0, 1.5, 0.0]
    assert cm.top1_agreement(ref, ref) == 1.0
    assert cm.top1_agreement(ref, cmp) == pytest.approx(0.75)
    assert cm.accuracy(ref, [0, 1, 2, 1]) == pytest.approx(0.75)
    assert cm.logit_drift(ref, cmp) == pytest.approx(2.5 / 12)
    assert cm.prob_drift(ref, ref) == 0.0
    assert 0 < cm.prob_drift(ref, cmp) < 1
    assert np.allclose(cm.softmax(ref).sum(1), 1.0)
    with pytest.raises(ValueError):
        cm.top1_agreement(ref, ref[:2])


def test_macs_do_not_change_when_activations_are_swapped(capsys):
    """torch-pruning's counter counts ReLU elements but not SiLU: activations are left out of MACs."""
    from torch import nn

    from compress.metrics.size import count_macs

    act = nn.SiLU()  # shared, as Ultralytics' Conv.default_act
    model = nn.Sequential(nn.Conv2d(3, 8, 3), act, nn.Conv2d(8, 8, 3), act)
    x = torch.zeros(1, 3, 16, 16)
    conv_macs = 3 * 8 * 9 * 14 * 14 + 8 * 8 * 9 * 12 * 12 + 8 * 14 * 14 + 8 * 12 * 12  # weights + biases
    silu = count_macs(model, x)
    relu = nn.ReLU()
    model[1], model[3] = relu, relu
    assert count_macs(model, x) == silu == conv_macs
    assert "already defined" not in capsys.readouterr().out
