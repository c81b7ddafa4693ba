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
5. Reduce (per-chip amounts, the paper's baseline) is run too: every accepted chip retrained alone
   for its own amount, validated and repaired by the same rule (:func:`repair_alone`), so both flows'
   epochs include what their validation asked for.

Data splits: the training images (the first ``train_limit``) are split, seeded, into a training
part and a held-out *validation* part (``val_fraction``). Everything that chooses something (the
map's cells, hence the amounts and groups; validation and repairs) is judged on the validation
part; the test split is read only at the end, for the reported accuracies and violations. The
constraint is applied to each split against the fault-free chip's accuracy on that split.

Cost accounting: the map is a fixed cost shared by Reduce and eFAT, conventional FAT pays none;
:func:`break_even_chips` gives the chip count from which a flow with a fixed cost costs no more than
another (per-chip epochs measured on this population).

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
import torch

from mitigation.campaign.journal import Journal
from mitigation.campaign.store import file_sha256
from mitigation.fat import (
    METHOD_DEFAULTS, check_chip_geometry, check_ws, fap, fap_masks, lower_like, retrain,
    save_fat_checkpoint, stuckat_fat,
)
from mitigation.grouping import Chip, fused, get_grouping, make_groups
from mitigation.resilience import ResilienceMap, build_resilience_map, check_grid, parse_aggregate
from sysarray.atomic import write_json, write_text
from sysarray.config import ArrayConfig
from sysarray.faults import FaultMap
from sysarray.validation import (
    check_choice, check_device, check_float, check_instance, check_int, check_output_path, check_positive_int,
)

CONFIG_VERSION = 2
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
    ``limit``: test images judged; ``train_limit``: training images used, of which ``val_fraction``
    (seeded) are held out as the validation split that chooses amounts and judges repairs.
    ``reduce``: also run Reduce (per-chip amounts), validated and repaired like eFAT's groups.
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
    val_fraction: float = 0.2
    reduce: bool = True

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
        check_float(self.val_fraction, "val_fraction", where, lo=0.0, hi=1.0, lo_open=True, hi_open=True)

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
def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions among the first ``n`` training images: a seeded permutation's
    last ``round(val_fraction * n)`` (at least 2) are validation, each part sorted; ValueError when
    fewer than 2 images would remain for training."""
    n_val = max(2, int(round(val_fraction * n)))
    if n - n_val < 2:
        raise ValueError(f"eFAT holds out {n_val} of {n} training images for validation (val_fraction="
                         f"{val_fraction:g}), which leaves fewer than 2 to train on; give more training images "
                         f"(--train-limit) or a smaller validation share.")
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7A1])).permutation(n)
    return np.sort(perm[:n - n_val]), np.sort(perm[n - n_val:])


def split_accuracy(program, images, labels, cfg: ArrayConfig, faults: FaultMap | None, device=None) -> float:
    """Accuracy (fraction) of ``program`` on ``images``/``labels`` on the chip ``cfg`` + ``faults``
    (the fast engine on ``device``, None: the CPU)."""
    res = program.run(images, cfg, faults=faults, engine="fast", count_changes=False, device=device)
    return res.accuracy(labels)


class ChipTrainer:
    """Retrains fresh copies of ``task``'s model for fault maps and judges them on chips.

    Bypass: FAP for the fused map, then FAP+T for ``epochs`` (0: FAP alone). Stuck-at: stuck-at FAT
    alternating between the given maps (0: the model unchanged). Training uses the training part of
    the split (:func:`split_indices`); ``accuracies(..., split="val")`` judges on the held-out
    validation part, ``split="test"`` on ``task``'s test images. ``device``: where training and
    the chip runs compute (None: the CPU; a CUDA torch.device: that GPU, with the training images
    and a copy of the model moved there once).
    """

    def __init__(self, task, cfg: ArrayConfig, settings: EfatSettings, device=None):
        self.task, self.cfg, self.settings, self.device = task, cfg, settings, device
        self.model = task.model if device is None else copy.deepcopy(task.model).to(device)
        if settings.bypass:
            check_ws(cfg, "eFAT in bypass mode")
        n = min(settings.train_limit or len(task.dataset.train_x), len(task.dataset.train_x))
        self.train_idx, self.val_idx = split_indices(n, settings.val_fraction, settings.seed)
        tx, ty = task.dataset.train_x, task.dataset.train_y
        self.x, self.y = tx[torch.from_numpy(self.train_idx)], ty[torch.from_numpy(self.train_idx)]
        self.val_x, self.val_y = tx[torch.from_numpy(self.val_idx)], ty[torch.from_numpy(self.val_idx)]
        if device is not None:
            self.x, self.y = self.x.to(device), self.y.to(device)
        method = "fapt" if settings.bypass else "stuckat"
        self.kw = dict(optimizer=settings.optimizer or METHOD_DEFAULTS[method][0],
                       lr=settings.lr if settings.lr is not None else METHOD_DEFAULTS[method][1],
                       batch_size=settings.batch_size, seed=settings.seed)
        clean_cfg = cfg.replace(bypass=False)
        self.clean_val_accuracy = split_accuracy(task.program, self.val_x, self.val_y, clean_cfg, None, device)
        self.clean_accuracy = split_accuracy(task.program, task.images, task.labels, clean_cfg, None, device)

    def train(self, maps: Sequence[FaultMap], epochs: float):
        """A new model retrained for ``maps``; returns ``(model, epochs spent, seconds)``."""
        task = self.task
        if self.settings.bypass:
            union = fused_map(maps)
            model = fap(self.model, task.program, self.cfg, union)
            if epochs > 0:
                res = retrain(model, lambda xb, step: model(xb), self.x, self.y, epochs,
                              grad_masks=fap_masks(task.program, union), **self.kw)
                return model, res.epochs, res.seconds
            return model, 0.0, 0.0
        if epochs > 0:
            model, res = stuckat_fat(self.model, task.program, self.cfg, list(maps), self.x, self.y, epochs,
                                     relower=lambda m: lower_like(m, task), **self.kw)
            return model, res.epochs, res.seconds
        return copy.deepcopy(self.model), 0.0, 0.0

    def accuracies(self, model, maps: Sequence[FaultMap], split: str = "val") -> list[float]:
        """Accuracy of ``model`` (lowered as ``sysarray run`` lowers it) on each map's chip, on the
        validation (``"val"``) or test (``"test"``) images."""
        check_choice(split, "split", "ChipTrainer.accuracies", ("val", "test"))
        images, labels = (self.val_x, self.val_y) if split == "val" else (self.task.images, self.task.labels)
        program = lower_like(model, self.task)
        return [split_accuracy(program, images, labels, self.cfg, fm, self.device) for fm in maps]

    def map_cell(self, fm: FaultMap, epochs: float) -> float:
        """One map cell, judged on the validation split."""
        if fm.is_empty:  # rate 0: the fault-free model, nothing to retrain
            return self.clean_val_accuracy
        model, _, _ = self.train([fm], epochs)
        return self.accuracies(model, [fm], "val")[0]

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
    """The outcome: per-chip rows, group records, Reduce's records and the cost dict written to cost.json."""

    chips: list[dict]
    groups: list[dict]
    cost: dict
    resilience: ResilienceMap = field(repr=False, default=None)
    reduce: list[dict] = field(default_factory=list)

    def table(self) -> str:
        c = self.cost
        v = c["validation"]
        red = c["reduce"]
        be = c["break_even"]

        def chips_text(n):
            return "never (its per-chip epochs are not lower)" if n is None else f"{n} chip{'s' if n != 1 else ''}"

        red_note = "measured, incl. repairs" if red["run"] else "planned only (not run)"
        lines = [
            f"eFAT on {c['chips']} chips ({c['mode']} mode). Constraint on the test split: accuracy >= "
            f"{c['target_accuracy']:.4f} (fault-free {c['clean_accuracy']:.4f}, {c['test_images']} images); amounts "
            f"chosen and repairs judged on the validation split: >= {v['target_accuracy']:.4f} (fault-free "
            f"{v['clean_accuracy']:.4f}, {v['images']} images held out of {v['images'] + v['train_images']} training images)",
            "",
            "| flow | retraining epochs | of them repairs | + map epochs | total epochs | seconds (retraining) | violations (test) | rejected |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| conventional FAT ({c['conventional_amount']:g} epochs per accepted chip, not run) | "
            f"{c['conventional_epochs']:g} | - | 0 | {c['conventional_epochs']:g} | {c['conventional_seconds']:.1f} (est.) | - | - |",
            f"| per-chip amounts (Reduce; {red_note}) | {red['epochs']:g} | {red['repair_epochs']:g} | {c['map_epochs']:g} | "
            f"{red['total_epochs']:g} | {red['seconds']:.1f}{'' if red['run'] else ' (est.)'} | "
            f"{'-' if not red['run'] else len(red['violations'])} | {'-' if not red['run'] else len(red['rejected'])} |",
            f"| eFAT ({c['groups']} groups, {c['grouping']}; {c['efat_planned_epochs']:g} planned) | {c['efat_epochs']:g} | "
            f"{c['repair_epochs']:g} | {c['map_epochs']:g} | {c['efat_total_epochs']:g} | {c['efat_seconds']:.1f} | "
            f"{len(c['violations'])} | {len(c['rejected'])} |",
            "",
            f"The resilience map: {c['map_epochs']:g} epochs, {c['map_seconds']:.1f} s, paid once and shared by Reduce and eFAT.",
            f"Break-even (linear in the chip count N, per-chip epochs as measured on these {c['chips_accepted']} accepted "
            f"chips): eFAT vs conventional from {chips_text(be['efat_vs_conventional'])} (map / (conventional - eFAT "
            f"per chip) = {c['map_epochs']:g} / ({be['conventional_per_chip']:.3g} - {be['efat_per_chip']:.3g})); eFAT vs "
            f"Reduce from {chips_text(be['efat_vs_reduce'])} (both pay the map; per chip {be['efat_per_chip']:.3g} vs "
            f"{be['reduce_per_chip']:.3g}); Reduce vs conventional from {chips_text(be['reduce_vs_conventional'])}.",
            "",
            f"rejected: {len(c['rejected'])} ({', '.join(c['rejected']) or 'none'}); violations on the test split: "
            f"{len(c['violations'])} ({', '.join(c['violations']) or 'none'}); on the validation split: "
            f"{len(c['val_violations'])}; repaired after validation: {len(c['repaired'])} ({c['repair_epochs']:g} epochs, "
            f"{c['repair_epochs_singletons']:g} of them for chips alone in their group)",
            "",
            "| chip | PE rate | own amount | group | fused rate | group epochs | val accuracy | test accuracy | meets (test) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.chips:
            amt = "beyond" if r["amount"] is None else f"{r['amount']:g}"
            grp = "-" if r["group"] is None else str(r["group"])
            fr = "-" if r["fused_rate"] is None else f"{r['fused_rate']:.4f}"
            ge = "-" if r["group_epochs"] is None else f"{r['group_epochs']:g}"
            vac = "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
            acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
            meets = "rejected" if r["rejected"] else ("yes" if r["meets"] else "NO")
            lines.append(f"| {r['chip']} | {r['rate']:.4f} | {amt} | {grp} | {fr} | {ge} | {vac} | {acc} | {meets} |")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------- cost
def break_even_chips(fixed: float, per_chip: float, other_fixed: float, other_per_chip: float) -> int | None:
    """The least chip count N >= 1 from which ``fixed + per_chip * N <= other_fixed + other_per_chip * N``
    holds for every larger N too; None when ``per_chip >= other_per_chip`` and it does not hold at N = 1
    (a flow whose per-chip cost is not lower never catches up)."""
    for name, v in (("fixed", fixed), ("per_chip", per_chip), ("other_fixed", other_fixed),
                    ("other_per_chip", other_per_chip)):
        check_float(v, name, "break_even_chips", lo=0.0)
    gap = other_per_chip - per_chip
    if gap <= 0:
        return 1 if gap == 0 and fixed <= other_fixed else None
    return max(1, math.ceil((fixed - other_fixed) / gap - 1e-9))


# ----------------------------------------------------------------------------------- the run
def target_accuracy(settings: EfatSettings, clean: float) -> float:
    """The accuracy every chip must reach; ValueError when even the fault-free chip misses it."""
    target = settings.min_accuracy if settings.min_accuracy is not None else clean - settings.max_drop
    if target > clean + 1e-12:
        raise ValueError(f"The accuracy constraint {target:.4f} is above the fault-free accuracy {clean:.4f} of the "
                         f"model; no retraining can meet it. Give a lower --min-accuracy or a --max-drop.")
    return target


def run_efat(model_path: str, chips_dir: str, cfg: ArrayConfig, settings: EfatSettings, out: str, *,
             dataset: str | None = None, data_dir: str | None = None, progress: bool = False,
             device=None) -> EfatResult:
    """Run eFAT for the chips in ``chips_dir`` and write OUTDIR (see the module docstring).

    Writes ``resilience.csv``/``.png``, ``groups.json`` (the plan), ``groups/group-NNN.pt`` (one
    checkpoint per group, plus ``group-NNN-<chip>.pt`` for repaired chips), ``cost.json`` and
    ``cost.md``. Returns the result. ``device``: where training and chip runs compute (None or
    "cpu": the CPU; "cuda": the GPU). Trained weights follow the device's float arithmetic, so a
    GPU run is its own configuration: config.json records the device and a resume must use the
    same one."""
    from accel_models.evaluation import prepare
    from tqdm.auto import tqdm

    check_instance(cfg, ArrayConfig, "cfg", "run_efat")
    settings.check()
    device = check_device(device, "device", "run_efat", cpu_as_none=True)
    cfg = cfg.replace(bypass=settings.bypass)
    chips = load_chips(chips_dir, cfg)
    task = prepare(model_path, dataset, data_dir, settings.limit)
    trainer = ChipTrainer(task, cfg, settings, device)
    target_val = target_accuracy(settings, trainer.clean_val_accuracy)
    target = target_accuracy(settings, trainer.clean_accuracy)

    outdir = check_output_path(out, "out", "run_efat", kind="dir")
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "groups").mkdir(exist_ok=True)
    config = {
        "format": "sysarray-efat", "version": CONFIG_VERSION, "model_sha256": file_sha256(model_path),
        "dataset": task.dataset.name, "array": cfg.to_dict(), "settings": settings.to_dict(),
        "chips": {name: hashlib.sha256(fm.records.tobytes()).hexdigest() for name, fm in chips},
    }
    if device is not None:  # a CPU run's configuration reads as it always has
        config["device"] = device.type
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
        # 1. the resilience map (validation split)
        done_map = [e for e in done if e.get("kind") == "map"]
        if done_map and (outdir / "resilience.csv").exists():
            rmap = ResilienceMap.from_csv((outdir / "resilience.csv").read_text(), settings.aggregate)
            rmap.epochs, rmap.seconds = done_map[-1]["epochs"], done_map[-1]["seconds"]
        else:
            rates = settings.rates if settings.rates is not None else default_rates(max(fm.pe_rate for _, fm in chips))
            rmap = build_resilience_map(trainer.map_cell, trainer.random_map, rates, settings.amounts,
                                        settings.maps_per_rate, settings.aggregate, progress=progress)
            rmap.save(str(outdir), target_val)
            journal.append([{"kind": "map", "epochs": rmap.epochs, "seconds": rmap.seconds}])

        # 2. per-chip amounts and 3. groups
        amount = lambda rate: rmap.amount_for(rate, target_val)  # noqa: E731
        own = {name: amount(fm.pe_rate) for name, fm in chips}
        maps = dict(chips)
        accepted = [Chip(name, fm.faulty_pes()) for name, fm in chips if own[name] is not None]
        plan = []
        if accepted:
            for gid, members in enumerate(make_groups(accepted, amount, settings.grouping)):
                f = fused(accepted, members)
                plan.append({"group": gid, "members": [accepted[i].name for i in members],
                             "fused_rate": float(f.mean()), "epochs": amount(float(f.mean()))})
        write_json(outdir / "groups.json", {"target_accuracy": target, "validation_target_accuracy": target_val,
                                             "groups": plan,
                                             "beyond_resilience": [n for n, _ in chips if own[n] is None]})

        # 4. one retraining per group, validation of every member, repairs; test accuracies
        finished = {e["group"]: e for e in done if e.get("kind") == "group"}
        records = []
        for g in tqdm(plan, desc="eFAT groups", unit="group", disable=not progress, leave=False):
            prev = finished.get(g["group"])
            if prev is not None and prev["members"] == g["members"] and prev["epochs"] == g["epochs"] \
                    and (outdir / prev["model"]).exists():
                records.append(prev)
                continue
            records.append(_retrain_group(g, trainer, maps, own, target_val, target, settings, task, outdir))
            journal.append([dict(records[-1], kind="group")])

        # 5. Reduce: every accepted chip alone for its own amount, validated and repaired the same way
        reduce_records = []
        if settings.reduce:
            finished_r = {e["chip"]: e for e in done if e.get("kind") == "reduce"}
            for name in tqdm([c.name for c in accepted], desc="Reduce chips", unit="chip", disable=not progress,
                             leave=False):
                prev = finished_r.get(name)
                if prev is not None and prev["amount"] == own[name]:
                    reduce_records.append(prev)
                    continue
                reduce_records.append(reduce_chip(trainer, name, maps[name], own[name], target_val, target,
                                                  settings))
                journal.append([dict(reduce_records[-1], kind="reduce")])

    result = _report(chips, own, plan, records, reduce_records, rmap, target, target_val, trainer, settings, cfg)
    result.resilience = rmap
    write_json(outdir / "cost.json", result.cost)
    write_text(outdir / "cost.md", result.table() + "\n")
    return result


def repair_alone(trainer, fm: FaultMap, amounts: Sequence[float], start: float, tried: float | None,
                 target_val: float) -> dict:
    """The repair rule shared by eFAT's groups and Reduce: retrain the chip alone on its own map with
    the grid amounts from ``start`` upwards, skipping those up to ``tried`` (already run alone), and
    keep the first whose validation accuracy meets ``target_val``. Returns ``model`` (None when no
    amount repairs it), ``amount``, ``val_accuracy``, ``epochs`` and ``seconds`` spent, ``tried``
    (the amounts run)."""
    out = {"model": None, "amount": None, "val_accuracy": None, "epochs": 0.0, "seconds": 0.0, "tried": []}
    for a in check_grid(amounts, "amount"):
        if a < start or (tried is not None and a <= tried):
            continue
        model, ep, sec = trainer.train([fm], a)
        out["epochs"] += ep
        out["seconds"] += sec
        out["tried"].append(a)
        acc = trainer.accuracies(model, [fm], "val")[0]
        if acc >= target_val:
            out.update(model=model, amount=a, val_accuracy=acc)
            break
    return out


def reduce_chip(trainer, name: str, fm: FaultMap, amount: float, target_val: float, target: float,
                settings: EfatSettings) -> dict:
    """Reduce for one chip: retrain it alone for its own ``amount``, validate on the validation split,
    repair by :func:`repair_alone` if it misses, and measure the final model on the test split."""
    model, spent, seconds = trainer.train([fm], amount)
    val = trainer.accuracies(model, [fm], "val")[0]
    rec = {"chip": name, "amount": amount, "final_amount": amount, "val_accuracy": val, "epochs_spent": spent,
           "repair_epochs": 0.0, "seconds": seconds, "first_pass_violation": val < target_val,
           "repaired": False, "rejected": False}
    if val < target_val and settings.repair:
        fix = repair_alone(trainer, fm, settings.amounts, amount, amount, target_val)
        rec["epochs_spent"] += fix["epochs"]
        rec["repair_epochs"] += fix["epochs"]
        rec["seconds"] += fix["seconds"]
        if fix["model"] is None:
            rec["rejected"] = True
            model = None
        else:
            model, rec["final_amount"], rec["val_accuracy"], rec["repaired"] = fix["model"], fix["amount"], \
                fix["val_accuracy"], True
    rec["accuracy"] = None if model is None else trainer.accuracies(model, [fm], "test")[0]
    rec["meets"] = rec["accuracy"] is not None and rec["accuracy"] >= target
    return rec


def _retrain_group(g: dict, trainer: ChipTrainer, maps: dict, own: dict, target_val: float, target: float,
                   settings: EfatSettings, task, outdir: Path) -> dict:
    members = g["members"]
    model, spent, seconds = trainer.train([maps[m] for m in members], g["epochs"])
    rel = f"groups/group-{g['group']:03d}.pt"
    save_fat_checkpoint(outdir / rel, model, task, {"method": "efat", "group": g["group"], "members": members,
                                                   "fused_rate": g["fused_rate"], "epochs": g["epochs"]})
    vals = trainer.accuracies(model, [maps[m] for m in members], "val")
    finals = {m: model for m in members}
    rec = {"group": g["group"], "members": members, "fused_rate": g["fused_rate"], "epochs": g["epochs"],
           "model": rel, "models": {m: rel for m in members}, "val_accuracy": dict(zip(members, vals)),
           "first_pass_violations": [m for m, a in zip(members, vals) if a < target_val],
           "repaired": [], "rejected": [], "epochs_spent": spent, "repair_epochs": 0.0, "seconds": seconds}
    if settings.repair:
        for m in rec["first_pass_violations"]:
            # a singleton group already ran its own map alone for g["epochs"]
            fix = repair_alone(trainer, maps[m], settings.amounts, own[m], g["epochs"] if members == [m] else None,
                               target_val)
            rec["epochs_spent"] += fix["epochs"]
            rec["repair_epochs"] += fix["epochs"]
            rec["seconds"] += fix["seconds"]
            if fix["model"] is None:
                rec["rejected"].append(m)
                del rec["models"][m]
                del finals[m]
                continue
            rel_m = f"groups/group-{g['group']:03d}-{m}.pt"
            save_fat_checkpoint(outdir / rel_m, fix["model"], task, {"method": "efat-repair", "group": g["group"],
                                                                    "chip": m, "epochs": fix["amount"]})
            rec["models"][m], rec["val_accuracy"][m] = rel_m, fix["val_accuracy"]
            finals[m] = fix["model"]
            rec["repaired"].append(m)
    # the claims: each kept model on its chip, test split (read here only)
    rec["accuracy"] = {m: trainer.accuracies(finals[m], [maps[m]], "test")[0] for m in members if m in finals}
    return rec


def _report(chips, own, plan, records, reduce_records, rmap: ResilienceMap, target, target_val,
            trainer: ChipTrainer, settings: EfatSettings, cfg: ArrayConfig) -> EfatResult:
    by_chip = {}
    for g, rec in zip(plan, records):
        for m in g["members"]:
            by_chip[m] = (g, rec)
    rows, rejected, violations, val_violations = [], [], [], []
    for name, fm in chips:
        g, rec = by_chip.get(name, (None, None))
        rej = own[name] is None or (rec is not None and name in rec["rejected"])
        acc = None if rec is None else rec["accuracy"].get(name)
        vacc = None if rec is None or rej else rec["val_accuracy"].get(name)
        meets = acc is not None and acc >= target
        if rej:
            rejected.append(name)
        else:
            if not meets:
                violations.append(name)
            if vacc is None or vacc < target_val:
                val_violations.append(name)
        rows.append({"chip": name, "rate": fm.pe_rate, "amount": own[name],
                     "group": None if g is None else g["group"], "fused_rate": None if g is None else g["fused_rate"],
                     "group_epochs": None if g is None else g["epochs"], "val_accuracy": vacc, "accuracy": acc,
                     "meets": meets, "rejected": rej, "model": None if rec is None else rec["models"].get(name)})
    accepted_amounts = [own[n] for n, _ in chips if own[n] is not None]
    n_acc = len(accepted_amounts)
    conv_amount = settings.conventional_epochs if settings.conventional_epochs is not None else max(rmap.amounts)
    efat_epochs = sum(r["epochs_spent"] for r in records)
    efat_seconds = sum(r["seconds"] for r in records)
    red_run = bool(settings.reduce)
    red_epochs = float(sum(r["epochs_spent"] for r in reduce_records)) if red_run else float(sum(accepted_amounts))
    red_seconds_measured = float(sum(r["seconds"] for r in reduce_records))
    spent_ep = rmap.epochs + efat_epochs + (red_epochs if red_run else 0.0)
    spent_s = rmap.seconds + efat_seconds + red_seconds_measured
    per_epoch = spent_s / spent_ep if spent_ep > 0 else 0.0
    conventional = conv_amount * n_acc  # the chips Reduce and eFAT serve, for a like comparison
    per_n = lambda e: e / n_acc if n_acc else 0.0  # noqa: E731
    break_even = {
        "conventional_per_chip": float(conv_amount), "reduce_per_chip": per_n(red_epochs),
        "efat_per_chip": per_n(efat_epochs), "map_epochs": rmap.epochs,
        "efat_vs_conventional": break_even_chips(rmap.epochs, per_n(efat_epochs), 0.0, conv_amount) if n_acc else None,
        "efat_vs_reduce": break_even_chips(rmap.epochs, per_n(efat_epochs), rmap.epochs, per_n(red_epochs))
        if n_acc else None,
        "reduce_vs_conventional": break_even_chips(rmap.epochs, per_n(red_epochs), 0.0, conv_amount) if n_acc else None,
        "formula": "least N >= 1 with fixed_A + per_chip_A * N <= fixed_B + per_chip_B * N, i.e. "
                   "ceil((fixed_A - fixed_B) / (per_chip_B - per_chip_A)) when per_chip_A < per_chip_B; "
                   "fixed = map epochs for Reduce and eFAT, 0 for conventional FAT",
    }
    reduce_cost = {
        "run": red_run,
        "planned_epochs": float(sum(accepted_amounts)),
        "epochs": red_epochs,
        "repair_epochs": float(sum(r["repair_epochs"] for r in reduce_records)),
        "total_epochs": rmap.epochs + red_epochs,
        "seconds": red_seconds_measured if red_run else red_epochs * per_epoch,
        "first_pass_violations": sorted(r["chip"] for r in reduce_records if r["first_pass_violation"]),
        "repaired": sorted(r["chip"] for r in reduce_records if r["repaired"]),
        "rejected": sorted(r["chip"] for r in reduce_records if r["rejected"]),
        "violations": sorted(r["chip"] for r in reduce_records if not r["rejected"] and not r["meets"]),
        "chips": reduce_records,
    }
    cost = {
        "mode": "bypass" if settings.bypass else "stuck-at",
        "array": cfg.to_dict(),
        "chips": len(chips),
        "chips_accepted": n_acc,
        "groups": len(plan),
        "grouping": settings.grouping,
        "clean_accuracy": trainer.clean_accuracy,
        "target_accuracy": target,
        "test_images": int(len(trainer.task.images)),
        "validation": {"images": int(len(trainer.val_idx)), "train_images": int(len(trainer.train_idx)),
                       "fraction": settings.val_fraction, "clean_accuracy": trainer.clean_val_accuracy,
                       "target_accuracy": target_val},
        "conventional_amount": conv_amount,
        "conventional_epochs": conventional,
        "per_chip_epochs": red_epochs,
        "efat_epochs": efat_epochs,
        "efat_planned_epochs": float(sum(g["epochs"] for g in plan)),
        "repair_epochs": float(sum(r.get("repair_epochs", 0.0) for r in records)),
        # a singleton group's run is exactly Reduce's run for that chip
        "repair_epochs_singletons": float(sum(r.get("repair_epochs", 0.0) for r in records if len(r["members"]) == 1)),
        "map_epochs": rmap.epochs,
        "efat_total_epochs": rmap.epochs + efat_epochs,
        "per_chip_total_epochs": rmap.epochs + red_epochs,
        "conventional_total_epochs": conventional,
        "break_even": break_even,
        "seconds_per_epoch": per_epoch,
        "conventional_seconds": conventional * per_epoch,
        "per_chip_seconds": reduce_cost["seconds"],
        "efat_seconds": efat_seconds,
        "map_seconds": rmap.seconds,
        "rejected": rejected,
        "violations": violations,
        "val_violations": val_violations,
        "first_pass_violations": sorted(m for r in records for m in r["first_pass_violations"]),
        "repaired": sorted(m for r in records for m in r["repaired"]),
        "accuracy": {r["chip"]: r["accuracy"] for r in rows},
        "per_chip": rows,
        "reduce": reduce_cost,
        "least_amounts": dict(zip([repr(r) for r in rmap.rates], rmap.least_amounts(target_val))),
    }
    return EfatResult(chips=rows, groups=records, cost=cost, reduce=reduce_records)


__all__ = ["ChipTrainer", "EfatResult", "EfatSettings", "break_even_chips", "default_rates", "fused_map",
           "load_chips", "reduce_chip", "repair_alone", "run_efat", "split_accuracy", "split_indices",
           "target_accuracy"]
