import pytest
import torch

from organet.model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from organet.model.unet import (
    ASEM_UNET,
    UNet,
    UNetConfig,
    context,
    count_parameters,
    init_weights,
    output_shape,
    valid_sizes,
)
from organet.preprocess import Normalization


def test_asem_unet_shapes_and_parameter_count():
    net = UNet(ASEM_UNET)
    assert count_parameters(net) == 5_837_730
    assert output_shape(ASEM_UNET, (204, 204, 204)) == (110, 110, 110)
    assert context(ASEM_UNET, (204, 204, 204)) == (47, 47, 47)
    # no normalization layers, only convs / relu / pooling / upsampling
    kinds = {type(m).__name__ for m in net.modules()}
    assert not any("Norm" in k for k in kinds)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 4 * 2 + 3 * 2 + 1
    assert all(c.kernel_size == (3, 3, 3) and c.padding == (0, 0, 0) for c in convs)


def test_forward_shape_matches_arithmetic_for_small_nets():
    cfg = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2), (2, 2, 2)))
    net = UNet(cfg)
    for s in (48, 52, (44, 56, 60)):
        shape = (s, s, s) if isinstance(s, int) else s
        with torch.no_grad():
            y = net(torch.zeros(1, 1, *shape))
        assert tuple(y.shape) == (1, 2, *output_shape(cfg, shape))


def test_asem_forward_204_gives_110():
    # real forward pass of the full network (about 20 s on a 2-core CPU) is too slow for the
    # suite; the meta device checks the shapes of the full net without computing.
    net = UNet(ASEM_UNET).to("meta")
    y = net(torch.empty(1, 1, 204, 204, 204, device="meta"))
    assert tuple(y.shape) == (1, 2, 110, 110, 110)


def test_valid_sizes_lists_asem_pair_and_rejects_invalid():
    pairs = dict(valid_sizes(ASEM_UNET, 220))
    assert pairs[204] == 110 and pairs[212] == 118
    assert output_shape(ASEM_UNET, (203, 204, 204)) is None
    with pytest.raises(ValueError, match="not valid"):
        context(ASEM_UNET, (200, 200, 200))


def _ckpt(cfg: UNetConfig) -> Checkpoint:
    return Checkpoint(
        architecture=cfg,
        input_shape=(48, 48, 48),
        voxel_size=(5.0, 5.0, 5.0),
        normalization=Normalization(),
        organelle="mito",
        state_dict=UNet(cfg).state_dict(),
        iteration=7,
        metrics={"val": {"f1": 0.5}},
    )


def test_checkpoint_round_trip_is_self_describing(tmp_path):
    cfg = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2), (2, 2, 2)))
    p = save_checkpoint(_ckpt(cfg), tmp_path / "c.pt")
    assert not list(tmp_path.glob("*.tmp"))
    c = load_checkpoint(p)
    assert c.architecture == cfg and c.iteration == 7 and c.voxel_size == (5.0, 5.0, 5.0)
    assert c.organelle == "mito" and c.metrics["val"]["f1"] == 0.5 and c.output_shape == (6, 6, 6)
    net = c.build_model()
    ref = UNet(cfg)
    ref.load_state_dict(_ckpt(cfg).state_dict)  # any weights; shapes must agree
    assert sum(p.numel() for p in net.parameters()) == count_parameters(ref)


def test_checkpoint_errors(tmp_path):
    cfg = UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2), (2, 2, 2)))
    p = save_checkpoint(_ckpt(cfg), tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="another architecture"):
        load_checkpoint(p, expect_architecture=UNetConfig(num_fmaps=4, downsample_factors=((2, 2, 2), (2, 2, 2))))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(junk)
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an organet checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    # weights that do not fit the stored architecture
    bad = _ckpt(cfg)
    bad.state_dict = UNet(UNetConfig(num_fmaps=3, downsample_factors=((2, 2, 2), (2, 2, 2)))).state_dict()
    save_checkpoint(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "bad.pt")


def test_kaiming_init_keeps_activations_alive_and_starts_at_half():
    cfg = UNetConfig(num_fmaps=4, downsample_factors=((2, 2, 2),) * 2)
    x = torch.rand(1, 1, 60, 60, 60) * 2 - 1
    torch.manual_seed(0)
    default = UNet(cfg)
    torch.manual_seed(0)
    he = UNet(cfg)
    init_weights(he, "kaiming")
    feats = {}
    he.up[0].register_forward_hook(lambda m, i, o: feats.__setitem__("he", o))
    default.up[0].register_forward_hook(lambda m, i, o: feats.__setitem__("default", o))
    with torch.no_grad():
        p = torch.softmax(he(x), 1)[:, 1]
        default(x)
    # He init keeps the top-level features at the input's scale; torch's default shrinks them many-fold
    assert feats["he"].std() > 0.1 * x.std()
    assert feats["he"].std() > 5 * feats["default"].std()
    assert torch.allclose(p, torch.full_like(p, 0.5), atol=0.02)
    untouched = UNet(cfg)
    before = [q.clone() for q in untouched.parameters()]
    init_weights(untouched, "pytorch")
    assert all(torch.equal(a, b) for a, b in zip(before, untouched.parameters()))
    with pytest.raises(ValueError, match="unknown weight init"):
        init_weights(untouched, "xavier")


def test_released_checkpoint_drops_state_and_local_paths(tmp_path):
    from typer.testing import CliRunner

    from organet.cli import app
    from organet.model.checkpoint import file_sha256

    ck = _ckpt(UNetConfig(num_fmaps=2, downsample_factors=((2, 2, 2),)))
    ck.optimizer_state = {"state": {0: {"exp_avg": torch.ones(1000)}}, "param_groups": []}
    ck.training_config = {"data": {"train": [{"raw": str(tmp_path / "data" / "raw.zarr"), "roi_vox": "0:5,:,:"}]}}
    src = save_checkpoint(ck, tmp_path / "run.pt")
    dst = tmp_path / "release.pt"
    res = CliRunner().invoke(app, ["models", "package", str(src), str(dst)])
    assert res.exit_code == 0, res.output
    rel = load_checkpoint(dst)
    assert rel.optimizer_state is None and rel.rng_state is None
    assert rel.training_config["data"]["train"][0] == {"raw": "raw.zarr", "roi_vox": "0:5,:,:"}
    assert rel.training_config["released_from"] == {"sha256": file_sha256(src), "iteration": 7}
    assert all(torch.equal(rel.state_dict[k], ck.state_dict[k]) for k in ck.state_dict)
    assert dst.stat().st_size < src.stat().st_size
    again = CliRunner().invoke(app, ["models", "package", str(src), str(dst)])
    assert again.exit_code == 2 and "exists" in again.output
