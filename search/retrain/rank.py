"""Ranking the retrained configs by the studies' own objective, averaged over seeds: never one lucky seed."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from core.errors import ConfigError
from search.retrain.runs import SeedRun
from search.retrain.select import Candidate
from search.study.space import format_params


def rank(candidates: dict[str, list[Candidate]], runs: dict[str, list[SeedRun]], *, primary: str, seeds: int,
         splits: int, log: Callable[[str], None]) -> pd.DataFrame:
    """One row per config, each study's configs by their mean objective (mean CCC over splits) over seeds,
    studies in the order given (the primary first). A config whose failed seeds left fewer than `seeds`
    is ranked on those it has and marked so (`seeds` column short of the number asked)."""
    rows = [{"study": c.study, "trial": c.trial, "config_key": c.key, "search value": c.search_value,
             "seed": r.seed, "objective": r.objective, "run ids": r.run_ids, "params": format_params(c.params)}
            | {f"CCC {t}": float(np.mean(v)) for t, v in r.target_ccc.items()}
            for cs in candidates.values() for c in cs for r in runs[c.key]]
    if not any(row["study"] == primary for row in rows):
        raise ConfigError(f"every retrain of study {primary!r} failed; nothing to choose")
    long = pd.DataFrame(rows)
    per_target = [c for c in long.columns if c.startswith("CCC ")]
    ranking = (long.groupby(["study", "trial", "config_key"], sort=False, dropna=False)
               .agg(**{"search value": ("search value", "first"), "seeds": ("seed", "count"),
                       "mean": ("objective", "mean"), "std": ("objective", lambda v: float(np.std(v))),
                       "min": ("objective", "min"), "per seed": ("objective", list),
                       **{c: (c, "mean") for c in per_target},
                       "run ids": ("run ids", "sum"), "params": ("params", "first")})
               .reset_index())
    ranking.insert(ranking.columns.get_loc("seeds") + 1, "failed seeds", seeds - ranking["seeds"])
    order = {name: i for i, name in enumerate(candidates)}
    ranking = ranking.sort_values(["study", "mean"], key=lambda s: s.map(order) if s.name == "study" else -s,
                                  kind="stable").reset_index(drop=True)
    log(f"ranking ({seeds} seeds, objective = mean CCC over {splits} split(s)):")
    for _, row in ranking.iterrows():
        short = f" on {row['seeds']} of {seeds} seeds (the others failed)" if row["failed seeds"] else ""
        log(f"  {row['study']}#{row['trial']}: {row['mean']:.4f} ± {row['std']:.4f}{short} (search: "
            f"{row['search value']:.4f}) | {row['params']}")
    return ranking
