"""eFAT: fault-aware training for many chips (docs/design.md §6.5; Hanif and Shafique, arXiv 2304.12949, 2023).

1. A resilience map (:mod:`mitigation.resilience`) over a fault-rate grid and a retraining-amount
   grid, the minimum accuracy over ``S`` random maps per rate.
2. Each chip's amount: the map's least amount meeting the constraint at the smallest grid rate at
   or above the chip's PE fault rate (none: *beyond resilience*, the chip is rejected).
3. Chips are grouped (:mod:`mitigation.grouping`, greedy by default) and each group is retrained
   once for its fused map (the OR of its members' faulty PEs).
4. Every member is validated on its own chip. A member that misses the constraint is *repaired*:
   retrained alone on its own map with the grid amounts from its own upwards, the first that
   meets the constraint kept; a chip no amount repairs is rejected. The repairs' epochs count
   towards eFAT's cost.

Bypass mode retrains with FAP+T, where union fusion is exact (a member's faulty PEs are a subset
of the fused map's). Stuck-at mode retrains with stuck-at FAT on all members' maps, batches
alternating between them (multi-map training); the fused rate still picks the amount.

Durability: OUTDIR/config.json fixes the configuration (a different one in the same OUTDIR is
refused); every finished stage (the map, each group) writes its files atomically and then one
fsync'ed line to the journal OUTDIR/journal.jsonl (:mod:`mitigation.campaign.journal`: a line cut
by a kill is dropped, that stage redone; a corrupt line elsewhere is refused), so a rerun skips
what is done.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mitigation.campaign.journal import Journal
from mitigation.campaign.store import file_sha256
from mitigation.fat import (
    METHOD_DEFAULTS, chip_accuracy, check_chip_geometry, check_ws, fap, fap_masks, lower_like, retrain,
    save_fat_checkpoint, stuckat_fat,
)
from mitigation.grouping import Chip, fused, get_grouping, make_groups
from mitigation.resilience import ResilienceMap, build_resilience_map, check_grid, parse_aggregate
from sysarray.atomic import write_json, write_text
from sysarray.config import ArrayConfig
from sysarray.faults import FaultMap
from sysarray.validation import check_choice, check_float, check_instance, check_int, check_output_path, check_positive_int

CONFIG_VERSION = 1
DEFAULT_AMOUNTS = (0.0, 1.0, 2.0, 4.0, 8.0)
RATE_STEP = 0.05
MAP_FAULTS = ("uniform", "clustered")  # sysarray.faultgen.by_pe_rate / clustered


@dataclass
class EfatSettings:
    """Everything that decides an eFAT run's results (kept in OUTDIR/config.json).

    Exactly one of ``max_drop`` (accuracy drop allowed against the fault-free chip) and
    ``min_accuracy`` (absolute), both fractions. ``rates``: None picks steps of
    :data:`RATE_STEP` up to two steps above the population's highest rate. ``registers``/``bits``/
    ``values``: the faults of the stuck-at map's random maps (bypass mode only needs positions).
    ``limit``: test images judged; ``train_limit``: training images used.
    """

    max_drop: float | None = None
    min_accuracy: float | None = None
    bypass: bool = True
    rates: Sequence[float] | None = None
    amounts: Sequence[float] = DEFAULT_AMOUNTS
    maps_per_rate: int = 3
    aggregate: str = "min"
    grouping: str = "greedy"
    conventional_epochs: float | None = None
    map_faults: str = "uniform"
    registers: Sequence[str] = ("psum",)
    bits: Sequence[int] | None = None
    values: Sequence[int] = (0, 1)
    optimizer: str | None = None
    lr: float | None = None
    batch_size: int = 64
    limit: int | None = None
    train_limit: int | None = None
    seed: int = 0
    repair: bool = True

    def check(self) -> None:
        if (self.max_drop is None) == (self.min_accuracy is None):
            raise ValueError("Give exactly one accuracy constraint: max_drop (--max-drop) or min_accuracy "
                             f"(--min-accuracy). Got max_drop={self.max_drop!r}, min_accuracy={self.min_accuracy!r}.")
        where = "EfatSettings"
        for name in ("max_drop", "min_accuracy"):
            check_float(getattr(self, name), name, where, lo=0.0, hi=1.0, none_ok=True)
        if self.rates is not None:
            check_grid(self.rates, "fault-rate", 1.0)
        check_grid(self.amounts, "retraining-amount")
        parse_aggregate(self.aggregate)
        get_grouping(self.grouping)
        check_choice(self.map_faults, "map_faults", where, MAP_FAULTS)
        check_positive_int(self.maps_per_rate, "maps_per_rate", where)
        check_float(self.conventional_epochs, "conventional_epochs", where, lo=0, none_ok=True)
        for name in ("limit", "train_limit"):
            check_int(getattr(self, name), name, where, lo=2, none_ok=True)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


# ----------------------------------------------------------------------------------- chips
def load_chips(folder: str | os.PathLike, cfg: ArrayConfig) -> list[tuple[str, FaultMap]]:
    """``(name, map)`` for every ``*.npz`` in ``folder`` (sorted by file name; name = file stem),
    each checked against ``cfg``'s array."""
    p = Path(folder)
    if not p.is_dir():
        raise ValueError(f"The chips directory '{p}' does not exist or is not a directory; write one with "
                         f"`sysarray faults generate ... -o {p}`.")
    files = sorted(p.glob("*.npz"))
    if not files:
        raise ValueError(f"The chips directory '{p}' holds no fault-map files (*.npz); write them with "
                         f"`sysarray faults generate ... -o {p}`.")
    chips = []
    for f in files:
        fm = FaultMap.load(f)
        if (fm.rows, fm.cols) != (cfg.rows, cfg.cols):
            raise ValueError(f"Chip '{f}' is a {fm.rows}x{fm.cols} array but the model runs on {cfg.rows}x{cfg.cols} "
                             f"(--array); every chip must have the model's array size.")
        check_chip_geometry(cfg, fm, f"chip '{f.name}'")
        chips.append((f.stem, fm))
    return chips


def default_rates(max_rate: float) -> list[float]:
    """0, 0.05, ... up to two steps above ``max_rate`` (at most 1)."""
    top = min(1.0, (math.floor(max_rate / RATE_STEP + 1e-9) + 2) * RATE_STEP)
    return [round(i * RATE_STEP, 10) for i in range(int(round(top / RATE_STEP)) + 1)]


def fused_map(maps: Sequence[FaultMap]) -> FaultMap:
    """The fused map of a group: every PE faulty in any member, each with the stuck bits of the first
    member (in order) faulty there. Its faulty PEs are the union (OR) of the members', which is all
    that bypass uses; ``FaultMap.union`` would refuse members with one bit stuck at opposite values."""
    seen = np.zeros(maps[0].shape, dtype=bool)
    parts = []
    for fm in maps:
        rec = fm.records
        new = ~seen[rec[:, 0], rec[:, 1]]
        parts.append(rec[new])
        seen |= fm.faulty_pes()
    return FaultMap.from_records(maps[0].rows, maps[0].cols, np.concatenate(parts))


# ----------------------------------------------------------------------------------- training
class ChipTrainer:
    """Retrains fresh copies of ``task``'s model for fault maps and judges them on chips.

    Bypass: FAP for the fused map, then FAP+T for ``epochs`` (0: FAP alone). Stuck-at: stuck-at FAT
    alternating between the given maps (0: the model unchanged).
    """

    def __init__(self, task, cfg: ArrayConfig, settings: EfatSettings):
        self.task, self.cfg, self.settings = task, cfg, settings
        if settings.bypass:
            check_ws(cfg, "eFAT in bypass mode")
        n = settings.train_limit or len(task.dataset.train_x)
        self.x, self.y = task.dataset.train_x[:n], task.dataset.train_y[:n]
        method = "fapt" if settings.bypass else "stuckat"
        self.kw = dict(optimizer=settings.optimizer or METHOD_DEFAULTS[method][0],
                       lr=settings.lr if settings.lr is not None else METHOD_DEFAULTS[method][1],
                       batch_size=settings.batch_size, seed=settings.seed)
        self.clean_accuracy = chip_accuracy(task.program, task, cfg.replace(bypass=False), None)

    def train(self, maps: Sequence[FaultMap], epochs: float):
        """A new model retrained for ``maps``; returns ``(model, epochs spent, seconds)``."""
        task = self.task
        if self.settings.bypass:
            union = fused_map(maps)
            model = fap(task.model, task.program, self.cfg, union)
            if epochs > 0:
                res = retrain(model, lambda xb, step: model(xb), self.x, self.y, epochs,
                              grad_masks=fap_masks(task.program, union), **self.kw)
                return model, res.epochs, res.seconds
            return model, 0.0, 0.0
        if epochs > 0:
            model, res = stuckat_fat(task.model, task.program, self.cfg, list(maps), self.x, self.y, epochs,
                                     relower=lambda m: lower_like(m, task), **self.kw)
            return model, res.epochs, res.seconds
        return copy.deepcopy(task.model), 0.0, 0.0

    def accuracies(self, model, maps: Sequence[FaultMap]) -> list[float]:
        """Accuracy of ``model`` (lowered as ``sysarray run`` lowers it) on each map's chip."""
        program = lower_like(model, self.task)
        return [chip_accuracy(program, self.task, self.cfg, fm) for fm in maps]

    def map_cell(self, fm: FaultMap, epochs: float) -> float:
        if fm.is_empty:  # rate 0: the fault-free model, nothing to retrain
            return self.clean_accuracy
        model, _, _ = self.train([fm], epochs)
        return self.accuracies(model, [fm])[0]

    def random_map(self, rate: float, s: int) -> FaultMap:
        st = self.settings
        seed = np.random.SeedSequence([int(st.seed), int(round(rate * 1_000_000)), int(s)])
        from sysarray.faultgen import by_pe_rate, clustered

        gen = by_pe_rate if st.map_faults == "uniform" else clustered
        return gen(self.cfg, rate, seed=np.random.default_rng(seed), registers=tuple(st.registers), bits=st.bits,
                   values=tuple(st.values))


# ----------------------------------------------------------------------------------- results
@dataclass
class EfatResult:
    """The outcome: per-chip rows, group records and the cost dict written to cost.json."""

    chips: list[dict]
    groups: list[dict]
    cost: dict
    resilience: ResilienceMap = field(repr=False, default=None)

    def table(self) -> str:
        c = self.cost
        lines = [
            f"eFAT on {c['chips']} chips ({c['mode']} mode), constraint: accuracy >= {c['target_accuracy']:.4f} "
            f"(fault-free {c['clean_accuracy']:.4f})",
            "",
            "| flow | retraining epochs | seconds |",
            "|---|---:|---:|",
            f"| conventional FAT ({c['conventional_amount']:g} epochs per accepted chip) | {c['conventional_epochs']:g} | "
            f"{c['conventional_seconds']:.1f} (est.) |",
            f"| per-chip amounts (Reduce) | {c['per_chip_epochs']:g} | {c['per_chip_seconds']:.1f} (est.) |",
            f"| eFAT ({c['groups']} groups, {c['grouping']}; {c['efat_planned_epochs']:g} planned + repairs) | "
            f"{c['efat_epochs']:g} | {c['efat_seconds']:.1f} |",
            f"| resilience map (shared by Reduce and eFAT) | {c['map_epochs']:g} | {c['map_seconds']:.1f} |",
            "",
            f"rejected: {len(c['rejected'])} ({', '.join(c['rejected']) or 'none'}); violations: "
            f"{len(c['violations'])}; repaired after validation: {len(c['repaired'])} ({c['repair_epochs']:g} epochs, "
            f"{c['repair_epochs_singletons']:g} of them for chips alone in their group, which Reduce would spend too)",
            "",
            "| chip | PE rate | own amount | group | fused rate | group epochs | accuracy | meets |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.chips:
            amt = "beyond" if r["amount"] is None else f"{r['amount']:g}"
            grp = "-" if r["group"] is None else str(r["group"])
            fr = "-" if r["fused_rate"] is None else f"{r['fused_rate']:.4f}"
            ge = "-" if r["group_epochs"] is None else f"{r['group_epochs']:g}"
            acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
            meets = "rejected" if r["rejected"] else ("yes" if r["meets"] else "NO")
            lines.append(f"| {r['chip']} | {r['rate']:.4f} | {amt} | {grp} | {fr} | {ge} | {acc} | {meets} |")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------- the run
def target_accuracy(settings: EfatSettings, clean: float) -> float:
    """The accuracy every chip must reach; ValueError when even the fault-free chip misses it."""
    target = settings.min_accuracy if settings.min_accuracy is not None else clean - settings.max_drop
    if target > clean + 1e-12:
        raise ValueError(f"The accuracy constraint {target:.4f} is above the fault-free accuracy {clean:.4f} of the "
                         f"model; no retraining can meet it. Give a lower --min-accuracy or a --max-drop.")
    return target


def run_efat(model_path: str, chips_dir: str, cfg: ArrayConfig, settings: EfatSettings, out: str, *,
             dataset: str | None = None, data_dir: str | None = None, progress: bool = False) -> EfatResult:
    """Run eFAT for the chips in ``chips_dir`` and write OUTDIR (see the module docstring).

    Writes ``resilience.csv``/``.png``, ``groups.json`` (the plan), ``groups/group-NNN.pt`` (one
    checkpoint per group, plus ``group-NNN-<chip>.pt`` for repaired chips), ``cost.json`` and
    ``cost.md``. Returns the result."""
    from accel_models.evaluation import prepare
    from tqdm.auto import tqdm

    check_instance(cfg, ArrayConfig, "cfg", "run_efat")
    settings.check()
    cfg = cfg.replace(bypass=settings.bypass)
    chips = load_chips(chips_dir, cfg)
    task = prepare(model_path, dataset, data_dir, settings.limit)
    trainer = ChipTrainer(task, cfg, settings)
    target = target_accuracy(settings, trainer.clean_accuracy)

    outdir = check_output_path(out, "out", "run_efat", kind="dir")
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "groups").mkdir(exist_ok=True)
    config = {
        "format": "sysarray-efat", "version": CONFIG_VERSION, "model_sha256": file_sha256(model_path),
        "dataset": task.dataset.name, "array": cfg.to_dict(), "settings": settings.to_dict(),
        "chips": {name: hashlib.sha256(fm.records.tobytes()).hexdigest() for name, fm in chips},
    }
    cfg_path = outdir / "config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if old != json.loads(json.dumps(config, sort_keys=True)):
            changed = sorted(k for k in set(old) | set(config) if old.get(k) != json.loads(json.dumps(config.get(k))))
            raise ValueError(f"OUTDIR '{outdir}' holds an eFAT run with a different configuration (differs in: "
                             f"{', '.join(changed)}); use another -o directory or delete it.")
    else:
        write_json(cfg_path, config)
    with Journal(outdir / "journal.jsonl", what="eFAT journal") as journal:
        done = journal.recover()
        # 1. the resilience map
        done_map = [e for e in done if e.get("kind") == "map"]
        if done_map and (outdir / "resilience.csv").exists():
            rmap = ResilienceMap.from_csv((outdir / "resilience.csv").read_text(), settings.aggregate)
            rmap.epochs, rmap.seconds = done_map[-1]["epochs"], done_map[-1]["seconds"]
        else:
            rates = settings.rates if settings.rates is not None else default_rates(max(fm.pe_rate for _, fm in chips))
            rmap = build_resilience_map(trainer.map_cell, trainer.random_map, rates, settings.amounts,
                                        settings.maps_per_rate, settings.aggregate, progress=progress)
            rmap.save(str(outdir), target)
            journal.append([{"kind": "map", "epochs": rmap.epochs, "seconds": rmap.seconds}])

        # 2. per-chip amounts and 3. groups
        amount = lambda rate: rmap.amount_for(rate, target)  # noqa: E731
        own = {name: amount(fm.pe_rate) for name, fm in chips}
        maps = dict(chips)
        accepted = [Chip(name, fm.faulty_pes()) for name, fm in chips if own[name] is not None]
        plan = []
        if accepted:
            for gid, members in enumerate(make_groups(accepted, amount, settings.grouping)):
                f = fused(accepted, members)
                plan.append({"group": gid, "members": [accepted[i].name for i in members],
                             "fused_rate": float(f.mean()), "epochs": amount(float(f.mean()))})
        write_json(outdir / "groups.json", {"target_accuracy": target, "groups": plan,
                                             "beyond_resilience": [n for n, _ in chips if own[n] is None]})

        # 4. one retraining per group, validation of every member, repairs
        finished = {e["group"]: e for e in done if e.get("kind") == "group"}
        records = []
        for g in tqdm(plan, desc="eFAT groups", unit="group", disable=not progress, leave=False):
            prev = finished.get(g["group"])
            if prev is not None and prev["members"] == g["members"] and prev["epochs"] == g["epochs"] \
                    and (outdir / prev["model"]).exists():
                records.append(prev)
                continue
            records.append(_retrain_group(g, trainer, maps, own, target, settings, task, outdir))
            journal.append([dict(records[-1], kind="group")])

    result = _report(chips, own, plan, records, rmap, target, trainer, settings, cfg)
    result.resilience = rmap
    write_json(outdir / "cost.json", result.cost)
    write_text(outdir / "cost.md", result.table() + "\n")
    return result


def _retrain_group(g: dict, trainer: ChipTrainer, maps: dict, own: dict, target: float, settings: EfatSettings,
                   task, outdir: Path) -> dict:
    members = g["members"]
    model, spent, seconds = trainer.train([maps[m] for m in members], g["epochs"])
    rel = f"groups/group-{g['group']:03d}.pt"
    save_fat_checkpoint(outdir / rel, model, task, {"method": "efat", "group": g["group"], "members": members,
                                                   "fused_rate": g["fused_rate"], "epochs": g["epochs"]})
    accs = trainer.accuracies(model, [maps[m] for m in members])
    rec = {"group": g["group"], "members": members, "fused_rate": g["fused_rate"], "epochs": g["epochs"],
           "model": rel, "models": {m: rel for m in members}, "accuracy": dict(zip(members, accs)),
           "first_pass_violations": [m for m, a in zip(members, accs) if a < target],
           "repaired": [], "rejected": [], "epochs_spent": spent, "repair_epochs": 0.0, "seconds": seconds}
    if not settings.repair:
        return rec
    for m in rec["first_pass_violations"]:
        fixed = False
        # alone, from its own amount up; a singleton group already tried its own map up to g["epochs"]
        floor = g["epochs"] if members == [m] else own[m]
        for a in [a for a in check_grid(settings.amounts, "amount") if a >= own[m] and (a > floor or members != [m])]:
            alone, s_ep, s_sec = trainer.train([maps[m]], a)
            rec["epochs_spent"] += s_ep
            rec["repair_epochs"] += s_ep
            rec["seconds"] += s_sec
            acc = trainer.accuracies(alone, [maps[m]])[0]
            if acc >= target:
                rel_m = f"groups/group-{g['group']:03d}-{m}.pt"
                save_fat_checkpoint(outdir / rel_m, alone, task, {"method": "efat-repair", "group": g["group"],
                                                                 "chip": m, "epochs": a})
                rec["models"][m], rec["accuracy"][m] = rel_m, acc
                rec["repaired"].append(m)
                fixed = True
                break
        if not fixed:
            rec["rejected"].append(m)
            del rec["models"][m]
    return rec


def _report(chips, own, plan, records, rmap: ResilienceMap, target, trainer: ChipTrainer, settings: EfatSettings,
            cfg: ArrayConfig) -> EfatResult:
    by_chip = {}
    for g, rec in zip(plan, records):
        for m in g["members"]:
            by_chip[m] = (g, rec)
    rows, rejected, violations = [], [], []
    for name, fm in chips:
        g, rec = by_chip.get(name, (None, None))
        rej = own[name] is None or (rec is not None and name in rec["rejected"])
        acc = None if rec is None else rec["accuracy"].get(name)
        meets = acc is not None and acc >= target
        if rej:
            rejected.append(name)
        elif not meets:
            violations.append(name)
        rows.append({"chip": name, "rate": fm.pe_rate, "amount": own[name],
                     "group": None if g is None else g["group"], "fused_rate": None if g is None else g["fused_rate"],
                     "group_epochs": None if g is None else g["epochs"], "accuracy": acc, "meets": meets,
                     "rejected": rej, "model": None if rec is None else rec["models"].get(name)})
    accepted_amounts = [own[n] for n, _ in chips if own[n] is not None]
    conv_amount = settings.conventional_epochs if settings.conventional_epochs is not None else max(rmap.amounts)
    efat_epochs = sum(r["epochs_spent"] for r in records)
    efat_seconds = sum(r["seconds"] for r in records)
    spent_ep, spent_s = rmap.epochs + efat_epochs, rmap.seconds + efat_seconds
    per_epoch = spent_s / spent_ep if spent_ep > 0 else 0.0
    conventional = conv_amount * len(accepted_amounts)  # the chips Reduce and eFAT serve, for a like comparison
    per_chip = float(sum(accepted_amounts))
    cost = {
        "mode": "bypass" if settings.bypass else "stuck-at",
        "array": cfg.to_dict(),
        "chips": len(chips),
        "chips_accepted": len(accepted_amounts),
        "groups": len(plan),
        "grouping": settings.grouping,
        "clean_accuracy": trainer.clean_accuracy,
        "target_accuracy": target,
        "conventional_amount": conv_amount,
        "conventional_epochs": conventional,
        "per_chip_epochs": per_chip,
        "efat_epochs": efat_epochs,
        "efat_planned_epochs": float(sum(g["epochs"] for g in plan)),
        "repair_epochs": float(sum(r.get("repair_epochs", 0.0) for r in records)),
        # a singleton group's run is exactly Reduce's run for that chip: Reduce would repair it too
        "repair_epochs_singletons": float(sum(r.get("repair_epochs", 0.0) for r in records if len(r["members"]) == 1)),
        "map_epochs": rmap.epochs,
        "seconds_per_epoch": per_epoch,
        "conventional_seconds": conventional * per_epoch,
        "per_chip_seconds": per_chip * per_epoch,
        "efat_seconds": efat_seconds,
        "map_seconds": rmap.seconds,
        "rejected": rejected,
        "violations": violations,
        "first_pass_violations": sorted(m for r in records for m in r["first_pass_violations"]),
        "repaired": sorted(m for r in records for m in r["repaired"]),
        "accuracy": {r["chip"]: r["accuracy"] for r in rows},
        "per_chip": rows,
        "least_amounts": dict(zip([repr(r) for r in rmap.rates], rmap.least_amounts(target))),
    }
    return EfatResult(chips=rows, groups=records, cost=cost)


__all__ = ["ChipTrainer", "EfatResult", "EfatSettings", "default_rates", "fused_map", "load_chips", "run_efat",
           "target_accuracy"]
