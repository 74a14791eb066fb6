"""LoRA on q/v, the three methods' trainable parts and counts, merging, and exact key adaptation."""

import copy
import json
import subprocess
import sys

import pytest
import timm
import torch

from encvit.cipher.key import Key
from encvit.common.errors import ConfigError, KeyMismatchError
from encvit.models.adapt import adapt_to_key
from encvit.models.backbones import create_backbone, create_skeleton
from encvit.models.lora import QVLoRA, add_lora, has_lora, lora_state_dict, merge_lora
from encvit.models.methods import count_trainable, prepare
from encvit.models.preprocess import BatchPreprocess


def tiny_vit(**kw):
    spec = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    spec.update(kw)
    return timm.models.vision_transformer.VisionTransformer(**spec)


def expected_counts(dim, depth, patch, chans, classes, rank, total_without_head):
    """Counts derived from the architecture, independently of the library code."""
    head = dim * classes + classes
    lora = depth * 2 * (rank * dim + dim * rank)
    patch_embed = dim * chans * patch * patch + dim
    return {"full": total_without_head + head, "melo": lora + head, "proposed": lora + head + patch_embed}


@pytest.mark.parametrize(
    "name,dim,depth,patch,classes,rank",
    [
        ("vit_base_patch16_224", 768, 12, 16, 10, 4),
        ("vit_small_patch16_224", 384, 12, 16, 100, 8),
        ("vit_tiny_patch16_224", 192, 12, 16, 2, 1),
        ("encvit-tiny", 96, 6, 4, 10, 4),
    ],
)
def test_counts_match_an_independent_derivation(name, dim, depth, patch, classes, rank):
    base = create_skeleton(name)
    without_head = sum(p.numel() for n, p in base.named_parameters() if not n.startswith("head."))
    want = expected_counts(dim, depth, patch, 3, classes, rank, without_head)
    got = {m: count_trainable(prepare(create_skeleton(name), m, classes, rank)) for m in want}
    assert got == want


def test_paper_counts_for_vit_b16_through_the_cli():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "encvit.cli",
            "params",
            "--backbone",
            "vit_base_patch16_224",
            "--num-classes",
            "10",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = json.loads(out)
    assert (counts["full"], counts["melo"], counts["proposed"]) == (85_806_346, 155_146, 745_738)
    assert round(counts["details"]["proposed"]["paper_m"], 2) == 0.71
    assert round(counts["details"]["melo"]["paper_m"], 2) == 0.15


def test_frozen_parts_of_each_method():
    for method, trained_patch, trained_pos in (("full", True, True), ("melo", False, False), ("proposed", True, False)):
        model = prepare(tiny_vit(), method, 3)
        assert model.patch_embed.proj.weight.requires_grad is trained_patch
        assert model.patch_embed.proj.bias.requires_grad is trained_patch
        assert model.pos_embed.requires_grad is trained_pos
        assert model.cls_token.requires_grad is (method == "full")
        assert model.norm.weight.requires_grad is (method == "full")
        assert model.head.weight.requires_grad and model.head.out_features == 3
        assert has_lora(model) is (method != "full")


def test_lora_starts_identical_and_uses_a_float_scale():
    torch.manual_seed(0)
    plain = tiny_vit().eval()
    adapted = add_lora(copy.deepcopy(plain), rank=8, alpha=4)  # alpha < rank: an integer scale would be 0
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(adapted(x), plain(x))
    lora = adapted.blocks[0].attn.qkv.parametrizations.weight[0]
    assert lora.scale == 0.5
    assert lora.lora_A_q.abs().sum() > 0 and lora.lora_B_q.abs().sum() == 0


def test_lora_touches_only_q_and_v_rows():
    lora = QVLoRA(8, rank=2, alpha=2)
    torch.nn.init.normal_(lora.lora_B_q)
    torch.nn.init.normal_(lora.lora_B_v)
    weight = torch.randn(24, 8)
    delta = lora(weight) - weight
    assert delta[:8].abs().sum() > 0 and delta[16:].abs().sum() > 0
    assert torch.equal(delta[8:16], torch.zeros(8, 8))
    assert torch.allclose(delta[:8], lora.lora_B_q @ lora.lora_A_q)


def test_bad_rank_is_refused():
    with pytest.raises(ConfigError, match="rank"):
        prepare(tiny_vit(), "melo", 3, rank=0)
    with pytest.raises(ConfigError, match="unknown method"):
        prepare(tiny_vit(), "lora", 3)


def test_merge_gives_same_logits_and_plain_linear_layers():
    torch.manual_seed(0)
    model = prepare(tiny_vit(), "proposed", 4, rank=4, alpha=8).eval()
    for p in lora_state_dict(model).values():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(3, 3, 16, 16)
    before = model(x)
    merge_lora(model)
    assert not has_lora(model) and not lora_state_dict(model)
    assert type(model.blocks[0].attn.qkv) is torch.nn.Linear
    assert "blocks.0.attn.qkv.weight" in model.state_dict()
    assert torch.allclose(model(x), before, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"scramble": True}, {"neg_pos": True}, {"scramble": True, "neg_pos": True}])
def test_exact_key_adaptation_vit_small(options):
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", num_classes=10).eval()
    key = Key.generate(16, 3, **options)
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    with torch.no_grad():
        plain = model(BatchPreprocess(224)(images))
        adapted = adapt_to_key(model, key)(BatchPreprocess(224, key=key)(images))
        unadapted = model(BatchPreprocess(224, key=key)(images))
    assert torch.allclose(adapted, plain, atol=1e-4)
    assert not torch.allclose(unadapted, plain, atol=1e-2)


def test_exact_key_adaptation_shipped_backbone():
    model = create_backbone("encvit-tiny").eval()
    key = Key.generate(4, 3, scramble=True, neg_pos=True)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        plain = model(BatchPreprocess(32)(images))
        adapted = adapt_to_key(model, key)(BatchPreprocess(32, key=key)(images))
    assert torch.allclose(adapted, plain, atol=1e-4)


def test_adaptation_refuses_a_key_of_another_block_size_or_per_channel_normalisation():
    with pytest.raises(KeyMismatchError, match="16x16"):
        adapt_to_key(tiny_vit(), Key.generate(16, 3))
    with pytest.raises(KeyMismatchError, match="same normalisation"):
        adapt_to_key(tiny_vit(), Key.generate(4, 3), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
