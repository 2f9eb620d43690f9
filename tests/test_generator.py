"""Generators: reference key layouts, the reference UNet's wiring and resize quirks, shapes, cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from locloc.models.generator import (
    DeconvGenerator,
    LightGenerator,
    UNetGenerator,
    UNetTrunk,
    build_generator,
)

MANIFEST = Path(__file__).parent / "data" / "golden" / "manifest.json"


def _layout(name):
    entries = json.loads(MANIFEST.read_text())["files"][name]["entries"]
    return [(k, tuple(s)) for k, s, _ in entries]


@pytest.mark.parametrize(("cls", "name"), [(UNetGenerator, "generator_unet"), (DeconvGenerator, "generator_deconv")])
def test_state_dict_layout_is_the_reference_one(cls, name):
    sd = cls(in_channels=384).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == _layout(name)


def test_unet_parameter_count():
    gen = UNetGenerator()
    n = sum(p.numel() for p in gen.parameters())
    used = sum(p.numel() for k, p in gen.named_parameters() if not k.startswith(("att_layer4.up_1", "att_layer4.down_3")))
    assert n == 4_052_738
    assert used == 4_029_506


def _feat(c=16, g=14, b=2, seed=0):
    return torch.randn(b, c, g, g, generator=torch.Generator().manual_seed(seed))


def _randomize_bn(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(1 + 0.1 * torch.rand(m.running_var.shape, generator=gen))


def test_reference_wiring_ignores_discarded_stage():
    torch.manual_seed(0)
    gen = UNetGenerator(in_channels=16, mid_channels=8, head_channels=8).eval()
    x = _feat()
    with torch.no_grad():
        before = gen(x)
        for p in list(gen.att_layer4.up_1.parameters()) + list(gen.att_layer4.down_3.parameters()):
            p.add_(torch.randn_like(p))
        after = gen(x)
        torch.testing.assert_close(before, after, atol=0, rtol=0)
        gen.att_layer4.reference_wiring = False  # the "fixed" UNet differs
        assert not torch.allclose(gen(x), before)


def test_up_stage_sizes_follow_the_reference_rule():
    trunk = UNetTrunk(16, 8, reference_wiring=False).eval()
    sizes = []
    for stage in (trunk.up_1, trunk.up_2, trunk.up_3):
        stage.register_forward_hook(lambda m, i, o: sizes.append((i[0].shape[-1], o.shape[-1])))
    with torch.no_grad():
        out = trunk(_feat())
    # 14 -> 7 -> 3 -> 1 going down; up: 1 px x3, 3 px -> 7, 7 -> 14
    assert sizes == [(1, 3), (3, 7), (7, 14)]
    assert out.shape == (2, 8, 14, 14)


def test_up_stage_concatenates_skip_first():
    trunk = UNetTrunk(16, 8).eval()
    seen = []
    trunk.up_3.conv.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    x = _feat()
    with torch.no_grad():
        trunk(x)
    torch.testing.assert_close(seen[0][:, :16], x)  # the 16-channel skip comes first


def test_output_shapes_and_ranges():
    x = _feat(b=1)
    with torch.no_grad():
        unet = UNetGenerator(16, mid_channels=8, head_channels=8).eval()(x)
        deconv = DeconvGenerator(16, hidden_channels=32, deconv_channels=8).eval()
        _randomize_bn(deconv)
        d = deconv(x)
        light = LightGenerator(16).eval()(x)
    assert unet.shape == (1, 1, 112, 112) and 0 <= unet.min() and unet.max() <= 1
    assert d.shape == (1, 1, 56, 56)
    assert light.shape == (1, 1, 112, 112) and 0 <= light.min() and light.max() <= 1


@pytest.mark.parametrize("grid", [4, 7, 16])
def test_light_generator_runs_on_any_grid(grid):
    gen = LightGenerator(in_channels=16, mid_channels=8, head_channels=(8, 8, 4))
    out = gen(_feat(g=grid))
    assert out.shape == (2, 1, 8 * grid, 8 * grid)
    out.mean().backward()
    assert all(p.grad is not None for p in gen.parameters())


def test_light_generator_is_much_cheaper_than_unet():
    x = torch.zeros(1, 384, 14, 14)
    flops = {}
    for name, gen in (("unet", UNetGenerator()), ("light", LightGenerator())):
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            gen.eval()(x)
        flops[name] = fc.get_total_flops()
    assert flops["unet"] > 8e9  # the reference head dominates (~9 GFLOP)
    assert flops["unet"] >= 3 * flops["light"]


def test_build_generator():
    assert isinstance(build_generator("light", 32), LightGenerator)
    assert build_generator("unet", 32).config["in_channels"] == 32
    with pytest.raises(ValueError, match="unknown generator"):
        build_generator("fcn", 32)
    with pytest.raises(ValueError):
        LightGenerator(16, head_channels=(8, 8))
