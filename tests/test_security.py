"""`encvit study security` at toy size: both sides of the trade-off per cipher setting, resumable, pieces that
merge in one folder; per-image keys leave nothing to learn and nothing to recover."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from encvit.attacks.blocks import to_blocks
from encvit.cipher.key import PerImageKeys
from encvit.cli import main
from encvit.common.errors import ConfigError
from encvit.experiments.security import (
    SecurityConfig,
    attack_once,
    collect,
    collect_adapter_leaks,
    markdown,
    security_study,
)
from encvit.training.run import TrainConfig

TOY = [
    "--limit",
    "60",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--seeds",
    "2",
    "--counts",
    "10",
    "--draws",
    "1",
    "--methods",
    "melo",
]


def test_per_image_keys_shuffle_each_image_its_own_way():
    keys = PerImageKeys(4, 3, seed=0)
    image = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    twice = keys.encrypt(image.repeat(2, 1, 1, 1))
    assert not torch.equal(twice[0], twice[1])  # the same image, two keys
    blocks = lambda x: to_blocks(x.permute(0, 2, 3, 1).numpy(), 4)  # noqa: E731
    assert (np.sort(blocks(twice), -1) == np.sort(blocks(image.repeat(2, 1, 1, 1)), -1)).all()  # values stay in blocks
    with pytest.raises(ConfigError, match="--per-image-keys"):
        TrainConfig(per_image_keys=True, passphrase="x")


def test_the_attack_recovers_a_shared_key_but_not_per_image_keys():
    shared = attack_once("shuffle", 12, draw=0, references=300)
    assert shared["images_exact"] == 1.0 and shared["positions_same_pixel"] == 1.0
    assert shared["plain_model_acc"] > 50
    per_image = attack_once("per-image", 12, draw=0, references=300)
    assert np.isnan(per_image["positions_same_pixel"]) and per_image["images_exact"] == 0.0
    assert per_image["psnr_db"] < 25


def test_the_study_runs_resumes_and_merges_pieces(tmp_path, capsys):
    out = tmp_path / "security"
    assert main(["study", "security", *TOY, "--cipher-settings", "shuffle", "--out", str(out)]) == 0
    assert main(["study", "security", *TOY, "--cipher-settings", "per-image", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    accuracy, attacks = collect(out)
    assert sorted(accuracy.setting.unique()) == ["per-image", "shuffle"] and len(accuracy) == 4
    assert sorted(attacks.setting.unique()) == ["per-image", "shuffle"]
    assert {p.name for p in out.iterdir()} >= {
        "keys",
        "runs",
        "attacks",
        "accuracy.csv",
        "attacks.csv",
        "security.md",
        "security.png",
        "meta.json",
    }
    assert (out / "keys" / "shuffle.json").exists() and not (out / "keys" / "per-image.json").exists()
    table = (out / "security.md").read_text()
    assert "| pixel shuffling | melo | 2 |" in table and "| one key per image | melo | 2 |" in table
    # Started again over both settings: nothing left to train or attack, the tables are rebuilt from the files.
    assert main(["study", "security", *TOY, "--cipher-settings", "shuffle,per-image", "--out", str(out)]) == 0
    again = capsys.readouterr().out
    assert ": test " not in again and "attack " not in again
    assert "melo-seed0: test" in first
    saved = pd.read_csv(out / "accuracy.csv")
    gap = (
        saved[saved.setting == "per-image"].sort_values("seed").test_acc.to_numpy()
        - saved[saved.setting == "shuffle"].sort_values("seed").test_acc.to_numpy()
    )
    assert f"{gap.mean():+.2f}" in table


def test_a_run_trained_otherwise_is_not_taken_for_the_study_s(tmp_path):
    out = tmp_path / "security"
    base = TrainConfig(limit=60, epochs=1, batch_size=32, progress=False)
    security_study(base, ("shuffle",), ("melo",), (10,), 1, 1, out, references=100)
    config = out / "runs" / "shuffle" / "melo-seed0" / "config.json"
    saved = json.loads(config.read_text())
    config.write_text(json.dumps({**saved, "epochs": 5}))
    with pytest.raises(ConfigError, match=r"melo-seed0 was made with other settings \(--epochs 5 there, 1 now\)"):
        security_study(base, ("shuffle",), ("melo",), (10,), 1, 1, out, references=100)
    config.write_text(json.dumps(saved))
    # A new piece with another batch size would mix two studies in one table: refused before any work.
    with pytest.raises(ConfigError, match=r"--batch-size 32 there, 4 now"):
        security_study(
            TrainConfig(limit=60, epochs=1, batch_size=4, progress=False),
            ("per-image",),
            ("melo",),
            (10,),
            1,
            1,
            out,
            references=100,
        )
    assert not (out / "runs" / "per-image").exists() and not (out / "attacks" / "per-image").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--counts", "1"], "--counts must be"),
        (["--cipher-settings", "rot13"], "one of shuffle"),
        (["--draws", "0"], "--draws must be"),
        (["--passphrase", "x"], "makes its own keys"),
        (["--dataset", "mnist5k"], "fashion5k"),
        (["--dataset", "cfashion5k"], "--dataset cfashion5k --backbone encvit-tiny-colour"),  # not the grey backbone
    ],
)
def test_bad_options_are_refused_before_work(tmp_path, capsys, argv, message):
    out = tmp_path / "security"
    assert main(["study", "security", *TOY[:-4], *argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ConfigError):
        SecurityConfig(counts=(1,))


def test_the_study_reads_the_key_off_proposed_adapters_once(tmp_path):
    out = tmp_path / "security"
    base = TrainConfig(limit=60, epochs=1, batch_size=32, progress=False)
    logged = []
    security_study(base, ("shuffle",), ("melo", "proposed"), (10,), 1, 1, out, references=100, log=logged.append)
    leak_files = sorted(p.relative_to(out).as_posix() for p in (out / "adapter-leaks").rglob("*.json"))
    assert leak_files == ["adapter-leaks/shuffle/proposed-seed0.json"]  # MeLo's patch embedding stays frozen
    row = json.loads((out / leak_files[0]).read_text())
    assert row["method"] == "proposed" and row["seed"] == 0 and 0 <= row["positions_same_pixel"] <= 1
    assert (
        f"| pixel shuffling | proposed | 1 | {row['positions_same_pixel']:.3f} |" in (out / "security.md").read_text()
    )
    assert len(pd.read_csv(out / "adapter_leaks.csv")) == 1
    logged.clear()
    security_study(base, ("shuffle",), ("melo", "proposed"), (10,), 1, 1, out, references=100, log=logged.append)
    assert not [line for line in logged if line.startswith("adapter ")]  # read once, then taken from its file
    # A shipped study keeps its tables, not its runs: they give the same report.
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for name in ("accuracy.csv", "attacks.csv", "adapter_leaks.csv", "meta.json"):
        shutil.copy(out / name, shipped / name)
    meta = json.loads((out / "meta.json").read_text())
    assert markdown(*collect(shipped), meta, collect_adapter_leaks(shipped)) == (out / "security.md").read_text()
