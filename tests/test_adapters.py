"""Adapter files: only what was trained, metadata checked on load, bad files refused by name."""

import copy

import pytest
import torch

from encvit.common.errors import AdapterError
from encvit.models.adapters import AdapterInfo, adapter_tensors, load_classifier, read_adapter, save_adapter
from encvit.models.backbones import create_backbone, weights_hash
from encvit.models.lora import lora_state_dict
from encvit.models.methods import prepare


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_backbone("encvit-tiny", pretrained=False)


def trained(backbone, method, classes=4, rank=4):
    model = prepare(copy.deepcopy(backbone), method, classes, rank)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    info = AdapterInfo(
        method=method,
        backbone="encvit-tiny",
        backbone_hash=weights_hash(backbone),
        class_names=[f"c{i}" for i in range(classes)],
        image_size=32,
        patch_size=4,
        rank=rank if method != "full" else 0,
        alpha=8.0 if method != "full" else 0.0,
        key_fingerprint="abc123",
    )
    return model, info


@pytest.mark.parametrize("method", ["melo", "proposed", "full", "head"])
def test_round_trip_gives_the_same_logits(tmp_path, backbone, method):
    model, info = trained(backbone, method)
    path = save_adapter(tmp_path / "a.safetensors", model, info)
    loaded, loaded_info = load_classifier(path, backbone=copy.deepcopy(backbone))
    assert loaded_info == info
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_only_what_was_trained_is_saved(tmp_path, backbone):
    melo, info = trained(backbone, "melo")
    _, tensors = read_adapter(save_adapter(tmp_path / "m.safetensors", melo, info))
    assert set(tensors) == set(lora_state_dict(melo)) | {"head.weight", "head.bias"}
    proposed, info = trained(backbone, "proposed")
    _, tensors = read_adapter(save_adapter(tmp_path / "p.safetensors", proposed, info))
    assert {"patch_embed.proj.weight", "patch_embed.proj.bias"} <= set(tensors)
    assert "pos_embed" not in tensors and "cls_token" not in tensors
    full, info = trained(backbone, "full")
    assert set(adapter_tensors(full, "full")) == set(full.state_dict())


@pytest.mark.parametrize(
    "field,value", [("method", "proposed"), ("rank", 8), ("num_classes", 10), ("backbone", "vit_base_patch16_224")]
)
def test_mismatched_expectations_are_refused_by_field(tmp_path, backbone, field, value):
    model, info = trained(backbone, "melo")
    path = save_adapter(tmp_path / "a.safetensors", model, info)
    with pytest.raises(AdapterError, match=f"its {field} is"):
        load_classifier(path, backbone=copy.deepcopy(backbone), expect={field: value})


def test_other_backbone_weights_are_refused(tmp_path, backbone):
    model, info = trained(backbone, "melo")
    path = save_adapter(tmp_path / "a.safetensors", model, info)
    other = copy.deepcopy(backbone)
    with torch.no_grad():
        other.blocks[0].mlp.fc1.weight.add_(1.0)
    with pytest.raises(AdapterError, match="backbone_hash"):
        load_classifier(path, backbone=other)


def test_truncated_and_corrupt_files_are_refused(tmp_path, backbone):
    model, info = trained(backbone, "melo")
    path = save_adapter(tmp_path / "a.safetensors", model, info)
    data = path.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="truncated or corrupt"):
        read_adapter(tmp_path / "t.safetensors")
    (tmp_path / "c.safetensors").write_bytes(b"not an adapter at all")
    with pytest.raises(AdapterError, match="c.safetensors"):
        read_adapter(tmp_path / "c.safetensors")
    with pytest.raises(AdapterError, match="not found"):
        read_adapter(tmp_path / "none.safetensors")


def test_tensor_shape_mismatch_is_refused(tmp_path, backbone):
    model, info = trained(backbone, "melo", classes=4)
    path = save_adapter(tmp_path / "a.safetensors", model, info)
    _, tensors = read_adapter(path)
    tensors["head.bias"] = torch.zeros(5)
    from safetensors.torch import save_file

    save_file(tensors, tmp_path / "b.safetensors", metadata=info.to_metadata())
    with pytest.raises(AdapterError, match="head.bias"):
        load_classifier(tmp_path / "b.safetensors", backbone=copy.deepcopy(backbone))


def test_sizes_of_paper_scale_adapters(tmp_path):
    """For ViT-B/16 the proposed adapter is about 3 MB in fp32 and MeLo's about 0.6 MB."""
    torch.manual_seed(0)
    import timm

    base = timm.create_model("vit_base_patch16_224")
    sizes = {}
    for method in ("melo", "proposed"):
        model = prepare(copy.deepcopy(base), method, 10)
        info = AdapterInfo(
            method=method,
            backbone="vit_base_patch16_224",
            backbone_hash="x",
            class_names=[str(i) for i in range(10)],
            image_size=224,
            patch_size=16,
            rank=4,
            alpha=8,
        )
        sizes[method] = save_adapter(tmp_path / f"{method}.safetensors", model, info).stat().st_size
    assert 0.55e6 < sizes["melo"] < 0.7e6
    assert 2.9e6 < sizes["proposed"] < 3.1e6
