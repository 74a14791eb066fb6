"""The security study: for each cipher setting, what the ciphertext-only attack recovers from 10 to 1,000
encrypted images, and what the setting costs MeLo, the proposed method and full fine-tuning in accuracy.

Settings (all at the backbone's patch size, keys from the documented demo passphrase): pixel shuffling;
+ negative-positive; + block scrambling; + both; and one fresh key per image, the reference point with no key
to learn or to recover. The attacker assumes the setting's options (the scheme is public, the key is not) and
holds public Fashion-MNIST images of other classes as references (`encvit.attacks.datasets`).

    OUT/keys/SETTING.json                 the study's keys (derived from the public demo passphrase)
    OUT/runs/SETTING/METHOD-seedS/        one training run each (encvit train's run directory)
    OUT/attacks/SETTING/nCOUNT-drawD.json one attack each
    OUT/adapter-leaks/SETTING/RUN.json    the key read off each proposed / full run's adapter
    OUT/accuracy.csv, attacks.csv, adapter_leaks.csv   one row per run / attack / adapter, rebuilt from the files
    OUT/security.md, security.png, meta.json

Every run and attack is its own file, written when done and skipped when present: an interrupted study resumes,
and pieces started on the same OUT with different --settings merge by construction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..cipher.key import Key, PerImageKeys
from ..common.atomic import begin_result_set, fresh_folder, output_lock, save_figure, write_text
from ..common.errors import (
    ConfigError,
    IncompleteResultsError,
    check_options,
    check_output_path,
    each,
    integer,
    one_of,
    option,
    optional,
    path,
    read_json,
    read_table,
    refuse_other_settings,
)
from ..common.shipped import DEMO_PASSPHRASE
from ..training.run import SETTING_NAMES, TrainConfig, finished_run, result_settings
from .cluster import check_engine, cluster_address, connected
from .compare import paired_interval, run_row
from .parallel import jobs_allowed, train_runs

SETTINGS = {
    "shuffle": ("pixel shuffling", {}),
    "neg-pos": ("+ negative-positive", {"neg_pos": True}),
    "scramble": ("+ block scrambling", {"scramble": True}),
    "both": ("+ both", {"neg_pos": True, "scramble": True}),
    "per-image": ("one key per image", None),
}
METHODS = ("melo", "proposed", "full")
# What the study runs on: (dataset, backbone) -> whether the attack's images are in colour (encvit.data.colour).
STUDY_DATA = {("fashion5k", "encvit-tiny"): False, ("cfashion5k", "encvit-tiny-colour"): True}


@dataclass
class SecurityConfig:
    """What the security study runs beyond the TrainConfig, and where its runs train (this machine, `jobs` at a
    time, or the Ray cluster at `address` with `threads` torch threads a run)."""

    settings: tuple = option(tuple(SETTINGS), each(one_of(*SETTINGS)), flag="--cipher-settings")
    methods: tuple = option(METHODS, each(one_of(*METHODS)))
    counts: tuple = option((10, 50, 200, 1000), each(integer(2, 2400)), flag="--counts")
    seeds: int = option(3, integer(1, 100))
    draws: int = option(3, integer(1, 100))
    references: int = option(1000, integer(10, 30000))
    out: str | None = option(None, optional(path()))
    jobs: int = option(1, jobs_allowed())
    address: str | None = option(None, optional(cluster_address()))
    threads: int | None = option(None, optional(integer(1)))

    def __post_init__(self):
        self.settings, self.methods, self.counts = tuple(self.settings), tuple(self.methods), tuple(self.counts)
        check_options(self)
        check_engine(self.jobs, self.address, self.threads)


def study_key(setting: str, block_size: int, channels: int) -> Key | PerImageKeys:
    """The key of a setting: the demo passphrase with the setting's options (per-image: a fresh key per image)."""
    options = SETTINGS[setting][1]
    if options is None:
        return PerImageKeys(block_size, channels)
    return Key.generate(block_size, channels, passphrase=DEMO_PASSPHRASE, **options)


def _run_configs(base: TrainConfig, plan: SecurityConfig, out: Path, key_files: dict) -> dict[Path, TrainConfig]:
    configs = {}
    for seed in range(base.seed, base.seed + plan.seeds):
        for setting in plan.settings:
            for method in plan.methods:
                run = out / "runs" / setting / f"{method}-seed{seed}"
                configs[run] = replace(
                    base,
                    method=method,
                    seed=seed,
                    key=key_files.get(setting),
                    passphrase=None,
                    per_image_keys=setting == "per-image",
                    out=str(run),
                    overwrite=True,
                    progress=base.progress and plan.jobs == 1,
                    test_every_epoch=False,
                )
    return configs


# What pieces of one study may differ in: each run and attack is its own file (settings, methods, counts, draws
# and seeds pick which); everything else must match the study's config.json.
PIECE_SETTINGS = ("method", "seed", "per_image_keys")


def study_settings(base: TrainConfig, references: int, backbone_hash: str) -> dict:
    """Every setting the study's numbers depend on that all its pieces share: the runs' (`result_settings`, less
    what picks a piece) and the attacker's reference images. Saved as OUT/config.json."""
    runs = {k: v for k, v in result_settings(base, None, backbone_hash).items() if k not in PIECE_SETTINGS}
    return {**runs, "references": references}


def _check_files(out: Path) -> None:
    """Read every run, attack and adapter file of the study once, so that a damaged one is refused before work."""
    for run in sorted((out / "runs").glob("*/*/")):
        if (run / "result.json").exists():
            fix = f"remove the run folder {run} to train it again"
            read_json(run / "result.json", fix=fix)
            read_json(run / "config.json", fix=fix)
    for piece in sorted([*(out / "attacks").glob("*/*.json"), *(out / "adapter-leaks").glob("*/*.json")]):
        read_json(piece, fix="remove it to redo it")


def attack_once(
    setting: str, count: int, draw: int, references: int, block_size: int = 4, colour: bool = False
) -> dict:
    """One ciphertext-only attack on `count` images of the victim classes encrypted with the setting's key
    (`colour`: the images in their fixed colours, scored by the colour comparison's plain MeLo model)."""
    from ..attacks import best_pose_quality, ciphertext_only, decryption_quality, key_agreement, plain_model_accuracy
    from ..attacks.datasets import fashion_attack_sets
    from ..models.predict import shipped_comparison

    victims, labels, public = fashion_attack_sets(count, references, seed=draw, colour=colour)
    key = study_key(setting, block_size, victims.shape[-1])
    options = SETTINGS[setting][1] or {}
    encrypted = (
        key.encrypt(victims)
        if isinstance(key, Key)
        else PerImageKeys(block_size, victims.shape[-1], draw).encrypt(victims)
    )
    start = time.perf_counter()
    recovered = ciphertext_only(encrypted, list(public), block_size, seed=draw, **options)
    seconds = time.perf_counter() - start
    decrypted = recovered.decrypt(encrypted)
    grid = (victims.shape[1] // block_size, victims.shape[2] // block_size)
    agreement = (
        key_agreement(key, recovered, grid if "scramble" in options else None)
        if isinstance(key, Key)
        else {"positions_exact": np.nan, "positions_same_pixel": np.nan}
    )
    return {
        "setting": setting,
        "count": count,
        "draw": draw,
        "seconds": seconds,
        **agreement,
        **decryption_quality(victims, decrypted),
        **best_pose_quality(victims, decrypted, block_size),
        "plain_model_acc": plain_model_accuracy(
            decrypted, labels, shipped_comparison("cfashion5k" if colour else "fashion5k") / "melo-plain"
        ),
    }


def security_study(
    base: TrainConfig,
    settings=tuple(SETTINGS),
    methods=METHODS,
    counts=(10, 50, 200, 1000),
    seeds: int = 3,
    draws: int = 3,
    out: str | Path = "runs/security",
    references: int = 1000,
    jobs: int = 1,
    log=print,
    address: str | None = None,
    threads: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run (or resume, with the same settings) the study into `out`, locked while it runs, its training runs on
    this machine or on the Ray cluster at `address`; returns (accuracy table, attack table) of everything there.
    `base.overwrite` starts afresh beside the old study and replaces it."""
    plan = SecurityConfig(settings, methods, counts, seeds, draws, references, str(out), jobs, address, threads)
    if base.key or base.passphrase or base.per_image_keys:
        raise ConfigError("the security study makes its own keys: give no --key or --passphrase")
    if (base.dataset, base.backbone) not in STUDY_DATA:
        raise ConfigError(
            "the security study runs on Fashion-MNIST with a shipped backbone (its attack data is "
            "Fashion-MNIST): use --dataset fashion5k --backbone encvit-tiny, or --dataset cfashion5k "
            "--backbone encvit-tiny-colour"
        )
    out = check_output_path(out, "--out", folder=True)
    with (
        output_lock(out),
        connected(plan.address, plan.threads) as cluster,
        fresh_folder(out, base.overwrite) as folder,
    ):  # --overwrite: afresh, swapped in when done
        return _security_study(base, plan, folder, log, cluster)


def _security_study(
    base: TrainConfig, plan: SecurityConfig, out: Path, log, cluster
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from ..models.backbones import create_backbone, weights_hash

    backbone = create_backbone(base.backbone)
    backbone_hash = weights_hash(backbone)
    settings = study_settings(base, plan.references, backbone_hash)
    if (out / "config.json").exists():
        refuse_other_settings(read_json(out / "config.json"), settings, f"the study in {out}", SETTING_NAMES)
    _check_files(out)
    block_size, channels = 4, 3  # encvit-tiny's patch size and channels
    keys = {setting: study_key(setting, block_size, channels) for setting in plan.settings}
    key_files = {s: out / "keys" / f"{s}.json" for s, key in keys.items() if isinstance(key, Key)}
    configs = {}
    for run, config in _run_configs(base, plan, out, {s: str(f) for s, f in key_files.items()}).items():
        # before any work: a run made with other settings is refused here, not after the attacks
        if not finished_run(run, result_settings(config, keys[run.parent.name].fingerprint, backbone_hash)):
            configs[run] = config
    begin_result_set(out, settings)
    for setting, file in key_files.items():
        keys[setting].save(file)
    started = time.perf_counter()
    _attacks(plan, out, log, STUDY_DATA[base.dataset, base.backbone])  # minutes, before the hours of training
    if configs:
        from ..data.datasets import load_dataset

        splits = load_dataset(base.dataset, limit=base.limit)
        runs = list(configs.values())
        train_runs(
            ((c, splits, backbone) for c in runs),
            plan.jobs,
            lambda i, r: log(
                f"{Path(runs[i].out).parent.name}/{Path(runs[i].out).name}: test "
                f"{r['test_acc']:.2f}%  {r['seconds']:.0f} s"
            ),
            cluster,
        )
    _adapter_leaks(out, log, base.backbone)
    accuracy, attacks = collect(out)
    write_summary(
        accuracy,
        attacks,
        out,
        {
            "dataset": base.dataset,
            "backbone": base.backbone,
            "settings": list(plan.settings),
            "counts": list(plan.counts),
            "seeds": plan.seeds,
            "draws": plan.draws,
            "references": plan.references,
            "epochs": base.epochs,
            "limit": base.limit,
            "jobs": plan.jobs,
            "address": plan.address,
            "seconds_this_call": time.perf_counter() - started,
        },
    )
    return accuracy, attacks


def _attacks(plan: SecurityConfig, out: Path, log, colour: bool = False) -> None:
    from tqdm.auto import tqdm

    todo = [
        (s, c, d)
        for s in plan.settings
        for c in plan.counts
        for d in range(plan.draws)
        if not (out / "attacks" / s / f"n{c}-draw{d}.json").exists()
    ]
    for setting, count, draw in tqdm(todo, desc="attacks", unit="attack", disable=not todo):
        row = attack_once(setting, count, draw, plan.references, colour=colour)
        write_text(out / "attacks" / setting / f"n{count}-draw{draw}.json", json.dumps(row, default=float))
        log(
            f"attack {setting} n={count} draw {draw}: images exact {row['images_exact']:.2f}, "
            f"PSNR {row['psnr_db']:.1f} dB, {row['seconds']:.1f} s"
        )


def adapter_leak_once(run: Path, setting: str, backbone) -> dict:
    """The key read off one trained run's adapter (its patch embedding against the public pretrained one)."""
    from ..attacks import key_agreement, key_from_adapter

    options = SETTINGS[setting][1]
    key = Key.load(run.parent.parent.parent / "keys" / f"{setting}.json")
    start = time.perf_counter()
    recovered = key_from_adapter(run, backbone, neg_pos=bool(options.get("neg_pos")))
    scores = key_agreement(key, recovered)
    method, seed = _method_and_seed(run)
    return {"setting": setting, "method": method, "seed": seed, "seconds": time.perf_counter() - start, **scores}


def _method_and_seed(run: Path) -> tuple[str, int]:
    """(method, seed) of a run folder named METHOD-seedS."""
    method, seed = run.name.rsplit("-seed", 1)
    return method, int(seed)


def _adapter_leaks(out: Path, log, backbone_name: str = "encvit-tiny") -> None:
    """Read the key off every finished proposed and full run of a shared-key setting (MeLo keeps the patch
    embedding frozen: nothing to read); one file per run, so it resumes like the attacks."""
    todo = [
        result.parent
        for result in sorted((out / "runs").glob("*/*/result.json"))
        if SETTINGS.get(result.parent.parent.name, (None, None))[1] is not None
        and _method_and_seed(result.parent)[0] in ("proposed", "full")
        and not (out / "adapter-leaks" / result.parent.parent.name / f"{result.parent.name}.json").exists()
    ]
    if not todo:
        return
    from ..models.backbones import create_backbone

    backbone = create_backbone(backbone_name)
    for run in todo:
        row = adapter_leak_once(run, run.parent.name, backbone)
        write_text(out / "adapter-leaks" / run.parent.name / f"{run.name}.json", json.dumps(row, default=float))
        log(f"adapter {run.parent.name}/{run.name}: key, same pixel {row['positions_same_pixel']:.3f}")


def collect_adapter_leaks(out: str | Path) -> pd.DataFrame:
    """One row per run whose adapter was read (OUT/adapter-leaks; in a shipped study, adapter_leaks.csv)."""
    table = Path(out) / "adapter_leaks.csv"
    if _shipped(out) and table.exists() and table.stat().st_size > 1:  # an empty table is written as one newline
        return read_table(table, IncompleteResultsError)
    files = sorted(Path(out).glob("adapter-leaks/*/*.json"))
    return pd.DataFrame([read_json(f, fix="remove it to redo it") for f in files])


def adapter_leak_summary(leaks: pd.DataFrame) -> pd.DataFrame:
    """Per setting and method: the key shares read off the adapters, averaged over seeds."""
    columns = [c for c in ("positions_same_pixel", "positions_exact", "neg_pos_mask") if c in leaks]
    summary = leaks.groupby(["setting", "method"])[columns].mean().reset_index()
    summary["seeds"] = leaks.groupby(["setting", "method"]).size().to_numpy()
    return summary.sort_values(["setting", "method"], key=_method_order).reset_index(drop=True)


def _shipped(out: str | Path) -> bool:
    """A study folder that keeps its tables but not the run and attack files they were built from."""
    return not (Path(out) / "runs").exists() and not (Path(out) / "attacks").exists()


def collect(out: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accuracy, attacks): one row per finished run and per attack in a study folder; a shipped study, which
    keeps its tables but not its runs, is read from accuracy.csv and attacks.csv."""
    out = Path(out)
    if _shipped(out) and (out / "accuracy.csv").exists():
        if not (out / "meta.json").exists():
            raise IncompleteResultsError(
                f"{out} holds unfinished security tables (no meta.json, which is written last)"
            )
        return (
            read_table(out / "accuracy.csv", IncompleteResultsError),
            read_table(out / "attacks.csv", IncompleteResultsError),
        )
    rows = []
    for result in sorted((out / "runs").glob("*/*/result.json")):
        fix = f"remove the run folder {result.parent} to train it again"
        rows.append({**run_row(read_json(result, fix=fix)), "setting": result.parent.parent.name})
    accuracy = pd.DataFrame(rows)
    attacks = pd.DataFrame(
        [read_json(f, fix="remove it to redo it") for f in sorted((out / "attacks").glob("*/*.json"))]
    )
    return accuracy, attacks


def accuracy_summary(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Per setting and method: mean test accuracy, half-width of its 95% interval over seeds, and the
    seed-paired gap to pixel shuffling with its half-width and p-value."""
    rows = []
    for (setting, method), group in accuracy.groupby(["setting", "method"], sort=False):
        values = group.sort_values("seed").test_acc.to_numpy()
        half = (
            stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
            if len(values) > 1
            else np.nan
        )
        row = {
            "setting": setting,
            "method": method,
            "seeds": len(values),
            "test_acc": values.mean(),
            "half_width": half,
        }
        base = accuracy[(accuracy.setting == "shuffle") & (accuracy.method == method)].sort_values("seed")
        if setting != "shuffle" and len(base) == len(group):
            diff = values - base.test_acc.to_numpy()
            row["gap_to_shuffle"], (row["gap_half_width"], row["gap_p"]) = diff.mean(), paired_interval(diff)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["setting", "method"], key=_method_order).reset_index(drop=True)


def _method_order(column: pd.Series) -> pd.Series:
    return column.map(list(METHODS).index) if column.name == "method" else _setting_order(column)


def attack_summary(attacks: pd.DataFrame) -> pd.DataFrame:
    """Per setting and number of ciphertexts: the attack's scores averaged over draws."""
    columns = [
        "positions_same_pixel",
        "positions_exact",
        "images_exact",
        "psnr_db",
        "ssim",
        "plain_model_acc",
        "images_exact_any_pose",
        "psnr_db_any_pose",
        "seconds",
    ]
    summary = attacks.groupby(["setting", "count"])[columns].mean().reset_index()
    return summary.sort_values(["setting", "count"], key=_setting_order).reset_index(drop=True)


def _setting_order(column: pd.Series) -> pd.Series:
    """Sort settings in the study's order (other columns as they are)."""
    return column.map(list(SETTINGS).index) if column.name == "setting" else column


def _label(setting: str) -> str:
    return SETTINGS[setting][0]


def markdown(accuracy: pd.DataFrame, attacks: pd.DataFrame, meta: dict, leaks: pd.DataFrame | None = None) -> str:
    """The study's tables as Markdown: the attack, the accuracy, and (when read) the adapters' leak."""
    colour = meta.get("dataset") == "cfashion5k"
    lines = [
        f"Ciphertext-only attack at M = 4 on {'colour' if colour else 'grey'} Fashion-MNIST (victims: 5 garment "
        f"classes of {meta.get('dataset', 'fashion5k')}; "
        f"references: {meta['references']:,} public images of the 5 other classes), mean of {meta['draws']} "
        "draws of the attacker's ciphertexts. 'key, same pixel': share of key positions put in the right pixel "
        + (
            "(attacks.csv also has 'positions_exact': the right pixel and channel)"
            if colour
            else "(the channels of a grey image cannot be told apart)"
        )
        + "; 'images exact': share of the attacker's "
        "decryptions equal to the plain image (PSNR counts an exact one as 100 dB); 'plain model': "
        "accuracy of the shipped MeLo model trained on "
        "plain images, on the attacker's decryptions; 'any pose': the same scores when the decryptions may be "
        "turned, mirrored or shifted round by whole blocks, one pose for all images (a viewer undoes it at a "
        "glance).",
        "",
        "| setting | ciphertexts | key, same pixel | images exact | PSNR (dB) | SSIM | plain model (%) "
        "| images exact, any pose | PSNR, any pose | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if len(attacks):
        for _, r in attack_summary(attacks).iterrows():
            key = "-" if np.isnan(r.positions_same_pixel) else f"{r.positions_same_pixel:.3f}"
            lines.append(
                f"| {_label(r.setting)} | {int(r['count']):,} | {key} | {r.images_exact:.2f} | "
                f"{r.psnr_db:.1f} | {r.ssim:.3f} | {r.plain_model_acc:.1f} | "
                f"{r.images_exact_any_pose:.2f} | {r.psnr_db_any_pose:.1f} | {r.seconds:.1f} |"
            )
    lines += [
        "",
        f"Test accuracy (%) on images encrypted with each setting: mean ± half-width of the 95% interval "
        f"over seeds; gap to pixel shuffling seed-paired (* p < 0.05). {meta['epochs']} epochs.",
        "",
        "| setting | method | seeds | test accuracy | gap to pixel shuffling |",
        "|---|---|---:|---:|---:|",
    ]
    if len(accuracy):
        for _, r in accuracy_summary(accuracy).iterrows():
            gap = r.get("gap_to_shuffle", np.nan)
            gap_text = (
                ""
                if pd.isna(gap)
                else f"{gap:+.2f}"
                + ("" if pd.isna(r.gap_half_width) else f" ± {r.gap_half_width:.2f}" + (" *" if r.gap_p < 0.05 else ""))
            )
            spread = "" if pd.isna(r.half_width) else f" ± {r.half_width:.2f}"
            lines.append(f"| {_label(r.setting)} | {r.method} | {r.seeds} | {r.test_acc:.2f}{spread} | {gap_text} |")
    if leaks is not None and len(leaks):
        lines += [
            "",
            "The key read off the trained adapters (`encvit attack adapter`: the patch embedding against the "
            "public pretrained one), mean over seeds; chance for 'same pixel' is 1/16.",
            "",
            "| setting | method | seeds | key, same pixel | key exact | negative-positive mask |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for _, r in adapter_leak_summary(leaks).iterrows():
            mask = "-" if pd.isna(r.get("neg_pos_mask", np.nan)) else f"{r.neg_pos_mask:.3f}"
            lines.append(
                f"| {_label(r.setting)} | {r.method} | {r.seeds} | {r.positions_same_pixel:.3f} | "
                f"{r.positions_exact:.3f} | {mask} |"
            )
    return "\n".join(lines) + "\n"


def plot(accuracy: pd.DataFrame, attacks: pd.DataFrame, path: Path) -> None:
    """Left: the attack's success against the ciphertexts it holds. Right: both sides of the trade-off."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    summary = attack_summary(attacks) if len(attacks) else pd.DataFrame()
    colours = {}
    for setting in SETTINGS:
        part = summary[summary.setting == setting] if len(summary) else summary
        if len(part):
            (line,) = left.plot(part["count"], part.psnr_db, marker="o", label=_label(setting))
            colours[setting] = line.get_color()
            if "psnr_db_any_pose" in part and (part.psnr_db_any_pose > part.psnr_db + 1).any():
                left.plot(
                    part["count"],
                    part.psnr_db_any_pose,
                    marker="o",
                    ls="--",
                    color=line.get_color(),
                    label=f"{_label(setting)}, any pose",
                )
    left.set(
        xscale="log",
        xlabel="encrypted images the attacker holds",
        ylabel="PSNR of the attack (dB)",
        title="What the ciphertext-only attack recovers",
    )
    left.legend(fontsize=8)
    if len(accuracy) and len(summary):
        # What the attacker gets at the most ciphertexts, in the best pose where it was scored (a viewer turns the
        # images upright); colour = setting as on the left, marker = method.
        largest = summary.sort_values("count").groupby("setting").tail(1).set_index("setting")
        gets = largest["psnr_db_any_pose"].fillna(largest.psnr_db) if "psnr_db_any_pose" in largest else largest.psnr_db
        acc = accuracy_summary(accuracy)
        for method, marker in zip(METHODS, "os^", strict=False):
            part = acc[(acc.method == method) & acc.setting.isin(largest.index)]
            right.scatter(
                part.test_acc,
                gets[part.setting],
                marker=marker,
                s=45,
                c=[colours[s] for s in part.setting],
                edgecolors="black",
                linewidths=0.5,
            )
            right.scatter([], [], marker=marker, c="white", edgecolors="black", label=method)
        right.set(
            xlabel="test accuracy on encrypted images (%)",
            ylabel=f"attack PSNR (dB), {int(summary['count'].max()):,} ciphertexts, best pose",
            title="Accuracy against what the attacker gets",
        )
        right.legend(fontsize=8, title="method (colour: setting)", title_fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def write_summary(accuracy: pd.DataFrame, attacks: pd.DataFrame, out: Path, meta: dict) -> None:
    """accuracy.csv, attacks.csv, adapter_leaks.csv, security.md, security.png, then meta.json of a study folder:
    meta.json is removed first and written last, so that the tables count only as a whole set."""
    begin_result_set(out)
    write_text(out / "accuracy.csv", accuracy.to_csv(index=False))
    write_text(out / "attacks.csv", attacks.to_csv(index=False))
    leaks = collect_adapter_leaks(out)
    write_text(out / "adapter_leaks.csv", leaks.to_csv(index=False))
    write_text(out / "security.md", markdown(accuracy, attacks, meta, leaks))
    plot(accuracy, attacks, out / "security.png")
    write_text(out / "meta.json", json.dumps(meta, indent=1, default=str))
