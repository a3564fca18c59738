"""``compress search`` from parsed arguments: run the search, print the table, map the outcome to an exit code."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from compress.errors import EXIT_OK, CompressError


def run_search(args) -> int:
    from compress import recipe as R
    from compress.search.config import make_config
    from compress.search.search import search

    cfg = make_config(target_speedup=args.target_speedup, target_latency_ms=args.target_latency_ms,
                      min_agreement=args.min_agreement, seed=args.seed, budget_min=args.budget_min,
                      trials=args.trials, candidates=args.candidates, threads=args.threads,
                      short_fraction=args.short_fraction, margin=args.margin, executor=args.executor, ray_address=args.ray_address,
                      workers=args.workers)
    raw = R.read_yaml(args.recipe)
    if not isinstance(raw, dict):
        raise CompressError(f"{args.recipe}: a recipe must be a YAML mapping")
    name = raw.get("name") or Path(args.recipe).stem
    out = Path(args.out or Path("runs") / f"{name}-search")
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    command = "compress search " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None
    result = search(args.recipe, out, cfg, raw=raw, force=args.force, table_cache=args.table_cache, say=say,
                    command=command)
    print((out / "candidates.md").read_text())
    w = result["winner"]
    print(f"search: winner {w['candidate']}: {w.get('speedup')}x measured (predicted {w.get('predicted_speedup')}x), "
          f"agreement {w.get('agreement')}; recipe: {out / 'recipe.yaml'} ({result['status']})")
    return EXIT_OK
