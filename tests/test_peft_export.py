"""Adapters in PEFT's format: PEFT loads an export with encvit's logits (also merged), the tensor names are PEFT's own,
export and import round-trip unchanged, and what is not an encvit q/v LoRA is refused in one line, writing nothing."""

import copy
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from cli_runner import run_in_process as run_cli
from peft import PeftModel
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from encvit.models.adapters import AdapterInfo, load_classifier, read_adapter, save_adapter
from encvit.models.backbones import create_backbone, weights_hash
from encvit.models.methods import prepare
from encvit.models.peft_format import peft_base
from encvit.training.run import TrainConfig, train

IMAGES_PER_CLASS = int(os.environ.get("ENCVIT_TEST_PEFT_IMAGES", "20"))
RANK, ALPHA = 3, 5.0  # not the defaults (4, 8): a swapped or doubled rank or alpha would show
CLASSES = ("red", "green", "blue")  # not the backbone's 10: the base's head must be resized


def snapshot(root) -> dict[str, str]:
    """Every path below `root` with a hash of its content."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 3-class image folder: noise tinted by the class's colour."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for channel, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(IMAGES_PER_CLASS):
            image = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
            image[..., channel] += 120
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module", params=["melo", "proposed"])
def run(request, dataset, tmp_path_factory):
    """A tiny trained run of each LoRA method, on encrypted images, rank 3 and alpha 5."""
    out = tmp_path_factory.mktemp(request.param) / "run"
    train(
        TrainConfig(
            dataset=f"folder:{dataset}",
            method=request.param,
            rank=RANK,
            alpha=ALPHA,
            epochs=1,
            batch_size=16,
            passphrase="peft",
            progress=False,
            out=str(out),
        )
    )
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "peft"
    status, err = run_cli("export", run, "--format", "peft", "--out", folder)
    assert status == 0, err
    return folder


def test_the_folder_holds_peft_files_with_the_mapped_config_and_encvit_metadata(run, exported):
    info, _ = read_adapter(run / "adapter.safetensors")
    assert {p.name for p in exported.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    config = json.loads((exported / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["target_modules"]) == (
        "LORA",
        2 * RANK,
        2 * ALPHA,
        ["qkv"],
    )
    assert config["modules_to_save"] == (["patch_embed.proj", "head"] if info.method == "proposed" else ["head"])
    with safe_open(exported / "adapter_model.safetensors", "pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "pt"
    assert (
        AdapterInfo.from_metadata(
            {k.removeprefix("encvit."): v for k, v in metadata.items() if k.startswith("encvit.")}, "export"
        )
        == info
    )
    readme = (exported / "README.md").read_text()
    assert f'PeftModel.from_pretrained(peft_base("{exported}"), "{exported}")' in readme
    assert info.key_fingerprint in readme


def test_peft_gives_encvit_logits_before_and_after_merging(run, exported):
    reference, info = load_classifier(run / "adapter.safetensors")
    base = create_backbone("encvit-tiny")
    base.reset_classifier(len(CLASSES))
    model = PeftModel.from_pretrained(base, str(exported)).eval()
    assert model.base_model.model.blocks[0].attn.qkv.scaling["default"] == pytest.approx(ALPHA / RANK)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
        assert torch.allclose(model(x), expected, atol=1e-5, rtol=0)
        merged = model.merge_and_unload()
        assert type(merged.blocks[0].attn.qkv) is torch.nn.Linear
        assert torch.allclose(merged(x), expected, atol=1e-5, rtol=0)
        # the LoRA matters at this tolerance: without it the logits are off by far more
        without_lora = copy.deepcopy(reference)
        for block in without_lora.blocks:
            lora = block.attn.qkv.parametrizations.weight[0]
            lora.lora_B_q.zero_()
            lora.lora_B_v.zero_()
        assert (without_lora(x) - expected).abs().max() > 1e-3


def test_peft_base_builds_the_base_the_readme_shows(exported):
    with torch.no_grad():
        base = peft_base(exported)
    assert base.head.out_features == len(CLASSES) and weights_hash(base) == weights_hash(create_backbone())
    model = PeftModel.from_pretrained(base, str(exported))
    assert model.base_model.model.head.modules_to_save["default"].out_features == len(CLASSES)


def test_our_tensor_names_are_the_ones_peft_saves(exported, tmp_path):
    base = create_backbone("encvit-tiny")
    base.reset_classifier(len(CLASSES))
    PeftModel.from_pretrained(base, str(exported)).save_pretrained(tmp_path / "resaved")
    ours, peft_own = (
        load_file(exported / "adapter_model.safetensors"),
        load_file(tmp_path / "resaved" / "adapter_model.safetensors"),
    )
    assert set(ours) == set(peft_own)
    assert all(torch.equal(ours[name], peft_own[name]) for name in ours)


def test_export_then_import_gives_identical_tensors_and_metadata(run, exported, tmp_path):
    source = run / "adapter.safetensors"
    status, err = run_cli("import", exported, "--out", tmp_path / "back.safetensors")
    assert status == 0, err
    before, after = load_file(source), load_file(tmp_path / "back.safetensors")
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    with safe_open(source, "pt") as a, safe_open(tmp_path / "back.safetensors", "pt") as b:
        assert a.metadata() == b.metadata()


def test_an_adapter_file_exports_as_its_run_directory_does(run, exported, tmp_path):
    status, err = run_cli("export", run / "adapter.safetensors", "--out", tmp_path / "from-file")
    assert status == 0, err
    assert snapshot(tmp_path / "from-file").keys() == snapshot(exported).keys()
    ours, again = (load_file(f / "adapter_model.safetensors") for f in (exported, tmp_path / "from-file"))
    assert all(torch.equal(ours[k], again[k]) for k in ours)


def test_an_existing_folder_is_kept_unless_overwrite(run, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    status, err = run_cli("export", run, "--out", tmp_path / "taken")
    assert status == 2 and "pass --overwrite" in err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert run_cli("export", run, "--out", tmp_path / "taken", "--overwrite")[0] == 0
    assert not (tmp_path / "taken" / "notes.txt").exists()


# ---- refusals --------------------------------------------------------------------------------------------------
def refused(argv: list, root, message: str) -> None:
    """`encvit ARGV` exits with 2 and one line holding `message`, and nothing below `root` changes."""
    before = snapshot(root)
    status, err = run_cli(*argv)
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert snapshot(root) == before


@pytest.mark.parametrize("method, kind", [("full", "a full fine-tuning adapter"), ("head", "a plain head")])
def test_a_full_or_head_adapter_is_not_a_lora(tmp_path, method, kind):
    model = prepare(create_backbone("encvit-tiny"), method, len(CLASSES))
    info = AdapterInfo(
        method=method,
        backbone="encvit-tiny",
        backbone_hash=weights_hash(model),
        class_names=list(CLASSES),
        image_size=32,
        patch_size=4,
    )
    save_adapter(tmp_path / "adapter.safetensors", model, info)
    refused(
        ["export", tmp_path / "adapter.safetensors", "--out", tmp_path / "peft"], tmp_path, f"is {kind}, not a LoRA"
    )


def test_an_adapter_without_a_tensor_its_method_trains_is_refused(run, tmp_path):
    with safe_open(run / "adapter.safetensors", "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(run / "adapter.safetensors")
    del tensors["head.bias"]
    save_file(tensors, tmp_path / "adapter.safetensors", metadata=metadata)
    refused(["export", tmp_path / "adapter.safetensors", "--out", tmp_path / "peft"], tmp_path, "does not fit a ")


def edited(exported, tmp_path, config=None, tensors=None, metadata=None):
    """A copy of the export with its config, tensors or header metadata changed by the given functions."""
    folder = tmp_path / "edited"
    shutil.copytree(exported, folder)
    if config:
        values = json.loads((folder / "adapter_config.json").read_text())
        config(values)
        (folder / "adapter_config.json").write_text(json.dumps(values))
    if tensors or metadata:
        weights = folder / "adapter_model.safetensors"
        with safe_open(weights, "pt") as handle:
            header = handle.metadata()
        values = load_file(weights)
        (tensors or (lambda _: None))(values)
        (metadata or (lambda _: None))(header)
        save_file(values, weights, metadata=header)
    return folder


def set_k_rows(tensors):
    lora_B = tensors["base_model.model.blocks.2.attn.qkv.lora_B.weight"]
    lora_B[lora_B.shape[0] // 3 + 1, 0] = 1e-3


def mix_q_and_v(tensors):
    tensors["base_model.model.blocks.0.attn.qkv.lora_B.weight"][0, -1] = 1e-3


def lora_on_fc1(tensors):
    tensors["base_model.model.blocks.0.mlp.fc1.lora_A.weight"] = torch.zeros(2 * RANK, 96)
    tensors["base_model.model.blocks.0.mlp.fc1.lora_B.weight"] = torch.zeros(384, 2 * RANK)


def other_rank(config):
    config["r"] = 8


def also_fc1(config):
    config["target_modules"] = ["qkv", "fc1"]


def rslora(config):
    config["use_rslora"] = True


def no_encvit_metadata(header):
    for name in [k for k in header if k.startswith("encvit.")]:
        del header[name]


def other_classes(header):
    header["encvit.class_names"] = json.dumps(["a", "b"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (dict(tensors=set_k_rows), "lora_B.weight has non-zero k rows"),
        (dict(tensors=mix_q_and_v), "mixes q and v"),
        (dict(config=also_fc1), "targets ['qkv', 'fc1']"),
        (dict(tensors=lora_on_fc1), "has LoRA on other modules than the qkv layers (base_model.model.blocks.0.mlp.fc1"),
        (dict(config=rslora), "uses PEFT's use_rslora=True"),
        (dict(config=other_rank), "adapter_config.json has r 8; the encvit metadata (rank 3, alpha 5) needs 6"),
        (dict(metadata=no_encvit_metadata), "has no encvit metadata"),
        (dict(metadata=other_classes), "does not fit: head.weight has shape (3, 96), a 2-class"),
    ],
    ids=["k-rows", "q-v-mixed", "config-targets", "tensor-targets", "rslora", "rank", "no-metadata", "classes"],
)
def test_import_refuses_what_is_not_an_encvit_lora(exported, tmp_path, edit, message):
    folder = edited(exported, tmp_path, **edit)
    refused(["import", folder, "--out", tmp_path / "adapter.safetensors"], tmp_path, message)


@pytest.mark.parametrize("missing", ["adapter_config.json", "adapter_model.safetensors"])
def test_import_refuses_a_folder_without_its_files(exported, tmp_path, missing):
    folder = edited(exported, tmp_path)
    (folder / missing).unlink()
    refused(
        ["import", folder, "--out", tmp_path / "adapter.safetensors"],
        tmp_path,
        f"has no {missing}: it is not a PEFT adapter folder",
    )


def test_import_refuses_a_folder_peft_saved_without_encvit_metadata(exported, tmp_path):
    base = create_backbone("encvit-tiny")
    base.reset_classifier(len(CLASSES))
    PeftModel.from_pretrained(base, str(exported)).save_pretrained(tmp_path / "resaved")
    refused(
        ["import", tmp_path / "resaved", "--out", tmp_path / "adapter.safetensors"], tmp_path, "has no encvit metadata"
    )
