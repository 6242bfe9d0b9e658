"""The training objective:

    lambda_pix * (L1 | L2) + lambda_perc * perceptual + lambda_adv * adversarial + lambda_tv * TV

Why each term: the pixel loss maximises PSNR; the perceptual (VGG feature)
and adversarial terms trade PSNR for sharper, more natural texture
(SRGAN/ESRGAN); TV suppresses noise and ringing. A zero lambda disables its
term and builds no network for it, so a plain L1 run never needs VGG weights.

VGG weights are never downloaded: `loss.vgg_weights` must name a local (or
fsspec) file. torchvision's `vgg19(weights=None)` is used when the file
holds VGG19; any other torchvision-layout VGG feature stack (`features.N`
convs, a max-pool wherever the index skips one) is built from the file's
shapes, which is how the tests prove the wiring with a tiny random network.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.weights import read_state_dict

from .config import LossConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingWeightsError(ValueError):
    """A loss term needs local weights that were not given or not found."""


def _features_state(state_dict: dict) -> dict:
    """Keys of a VGG features stack as '<index>.weight'/'<index>.bias'."""
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"^(module\.)?(vgg\.)?", "", key)
        if key.startswith("classifier."):
            continue
        key = key[len("features."):] if key.startswith("features.") else key
        if re.fullmatch(r"\d+\.(weight|bias)", key):
            out[key] = value
    return out


def _vgg19_shapes() -> dict[str, tuple]:
    """Key -> shape of torchvision's vgg19().features, from its layer list
    (building the 143 M-parameter network just to compare would be slow)."""
    shapes, index, channels = {}, 0, 3
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"):
        if item == "M":
            index += 1
            continue
        shapes[f"{index}.weight"], shapes[f"{index}.bias"] = (item, channels, 3, 3), (item,)
        index, channels = index + 2, item
    return shapes


def build_vgg_features(state_dict: dict) -> tuple[nn.Sequential, dict[str, int]]:
    """(features Sequential with the weights loaded, {layer name: index}).
    Names follow the VGG convention: conv{block}_{n}, relu{block}_{n}, pool{block}."""
    weights = _features_state(state_dict)
    conv_idx = sorted({int(k.split(".")[0]) for k in weights})
    if not conv_idx:
        raise MissingWeightsError("the VGG weights file holds no 'features.N.weight' convolutions")
    features = None
    if {k: tuple(v.shape) for k, v in weights.items()} == _vgg19_shapes():
        import torchvision

        features = torchvision.models.vgg19(weights=None).features
    if features is None:  # a VGG-style stack of another size (tests: a tiny random one)
        layers: list[nn.Module] = []
        for n, i in enumerate(conv_idx):
            while len(layers) < i:
                layers.append(nn.MaxPool2d(2, 2))  # the index gap before a conv is a pool
            w = weights[f"{i}.weight"]
            layers += [nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2), nn.ReLU(inplace=True)]
        features = nn.Sequential(*layers)
    features.load_state_dict(weights, strict=True)
    names, block, n = {}, 1, 0
    for i, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d):
            n += 1
            names[f"conv{block}_{n}"] = i
        elif isinstance(layer, nn.ReLU):
            names[f"relu{block}_{n}"] = i
        elif isinstance(layer, nn.MaxPool2d):
            names[f"pool{block}"] = i
            block, n = block + 1, 0
    return features, names


class PerceptualLoss(nn.Module):
    """Weighted distance between VGG features of SR and HR (ImageNet
    normalisation; layer weights as in BasicSR, e.g. {"conv5_4": 1.0})."""

    def __init__(self, weights_path: str, layers: dict[str, float], criterion: str = "l1"):
        super().__init__()
        if not weights_path:
            raise MissingWeightsError(
                "loss.lambda_perc > 0 needs local VGG19 weights: set loss.vgg_weights to a "
                "torchvision vgg19 state dict file (.pth or .safetensors); nothing is downloaded"
            )
        try:
            state_dict, _, _ = read_state_dict(weights_path)
        except Exception as error:
            raise MissingWeightsError(
                f"loss.vgg_weights = {weights_path!r} cannot be read ({error}); the perceptual loss "
                "(loss.lambda_perc > 0) needs local VGG19 weights, nothing is downloaded"
            ) from error
        features, names = build_vgg_features(state_dict)
        unknown = [name for name in layers if name not in names]
        if unknown:
            raise ValueError(f"loss.perc_layers {unknown} not in the VGG network (has {', '.join(names)})")
        last = max(names[name] for name in layers)
        self.features = features[: last + 1].eval().requires_grad_(False)
        self.layers = {names[name]: float(w) for name, w in layers.items()}
        self.criterion = F.l1_loss if criterion == "l1" else F.mse_loss
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):  # the feature net stays in eval mode
        super().train(mode)
        self.features.eval()
        return self

    def _feats(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = (x - self.mean) / self.std
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                out[i] = x.clone() if isinstance(layer, nn.Conv2d) else x
        return out

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        fs = self._feats(sr)
        with torch.no_grad():
            fh = self._feats(hr)
        return sum(w * self.criterion(fs[i], fh[i]) for i, w in self.layers.items())


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV: mean absolute difference of neighbouring pixels."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


class VGGStyleDiscriminator(nn.Module):
    """Strided conv blocks, global average pooling, one logit per image; the
    pooling (instead of BasicSR's fixed-size linear layer) accepts any crop."""

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        ch = num_feat
        for out in (num_feat, num_feat * 2, num_feat * 4, num_feat * 8):
            layers += [nn.Conv2d(ch, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            ch = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(ch, 100), nn.LeakyReLU(0.2, True), nn.Linear(100, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))


class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's U-Net discriminator with spectral norm: one logit per
    pixel, so it judges local texture as well as global structure."""

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64):
        super().__init__()
        sn = nn.utils.spectral_norm
        f = num_feat
        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        self.conv1 = sn(nn.Conv2d(f, f * 2, 4, 2, 1, bias=False))
        self.conv2 = sn(nn.Conv2d(f * 2, f * 4, 4, 2, 1, bias=False))
        self.conv3 = sn(nn.Conv2d(f * 4, f * 8, 4, 2, 1, bias=False))
        self.conv4 = sn(nn.Conv2d(f * 8, f * 4, 3, 1, 1, bias=False))
        self.conv5 = sn(nn.Conv2d(f * 4, f * 2, 3, 1, 1, bias=False))
        self.conv6 = sn(nn.Conv2d(f * 2, f, 3, 1, 1, bias=False))
        self.conv7 = sn(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv8 = sn(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        up = lambda t, like: F.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        x4 = act(self.conv4(up(x3, x2))) + x2
        x5 = act(self.conv5(up(x4, x1))) + x1
        x6 = act(self.conv6(up(x5, x0))) + x0
        return self.conv9(act(self.conv8(act(self.conv7(x6)))))


def build_discriminator(cfg: LossConfig) -> nn.Module:
    if cfg.discriminator == "unet":
        return UNetDiscriminatorSN(3, cfg.disc_feat)
    if cfg.discriminator == "vgg":
        return VGGStyleDiscriminator(3, cfg.disc_feat)
    raise ValueError(f"loss.discriminator must be 'unet' or 'vgg', not {cfg.discriminator!r}")


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def generator_adv_loss(gan_type: str, fake: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """Generator side: vanilla GAN, or relativistic average (ESRGAN)."""
    if gan_type == "vanilla":
        return _bce(fake, 1.0)
    real = real.detach()
    return (_bce(real - fake.mean(), 0.0) + _bce(fake - real.mean(), 1.0)) / 2


def discriminator_loss(gan_type: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    if gan_type == "vanilla":
        return (_bce(real, 1.0) + _bce(fake, 0.0)) / 2
    return (_bce(real - fake.mean(), 1.0) + _bce(fake - real.mean(), 0.0)) / 2


class SRLoss(nn.Module):
    """The generator's objective. forward(sr, hr) -> (total, {term: weighted
    value}) where the terms are 'pix', 'perc', 'adv', 'tv' (enabled ones only)."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        if cfg.pixel not in ("l1", "l2"):
            raise ValueError(f"loss.pixel must be 'l1' or 'l2', not {cfg.pixel!r}")
        if cfg.gan_type not in ("vanilla", "relativistic"):
            raise ValueError(f"loss.gan_type must be 'vanilla' or 'relativistic', not {cfg.gan_type!r}")
        self.cfg = cfg
        self.perceptual = (
            PerceptualLoss(cfg.vgg_weights, cfg.perc_layers, cfg.perc_criterion) if cfg.lambda_perc > 0 else None
        )
        self.discriminator = build_discriminator(cfg) if cfg.lambda_adv > 0 else None
        # Under DDP the trainer sets this to the wrapped discriminator for its own
        # step; the generator's pass uses the bare module (no gradient sync needed).
        self.discriminator_ddp: nn.Module | None = None

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, terms = self.cfg, {}
        if cfg.lambda_pix > 0:
            pix = F.l1_loss(sr, hr) if cfg.pixel == "l1" else F.mse_loss(sr, hr)
            terms["pix"] = cfg.lambda_pix * pix
        if self.perceptual is not None:
            terms["perc"] = cfg.lambda_perc * self.perceptual(sr, hr)
        if self.discriminator is not None:
            # The discriminator is not updated here (its step is separate) but
            # the gradient must flow through it into the generator.
            disc = self.discriminator
            for p in disc.parameters():
                p.requires_grad_(False)
            fake = disc(sr)
            real = disc(hr) if cfg.gan_type == "relativistic" else None
            for p in disc.parameters():
                p.requires_grad_(True)
            terms["adv"] = cfg.lambda_adv * generator_adv_loss(cfg.gan_type, fake, real)
        if cfg.lambda_tv > 0:
            terms["tv"] = cfg.lambda_tv * total_variation(sr)
        if not terms:
            raise ValueError("every loss weight is zero: set at least one of loss.lambda_pix/perc/adv/tv")
        return sum(terms.values()), terms

    def discriminator_loss(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss on a detached SR batch (its own step)."""
        disc = self.discriminator if self.discriminator_ddp is None else self.discriminator_ddp
        # One forward for both halves: DDP allows a single forward per backward.
        real, fake = disc(torch.cat([hr, sr.detach()])).chunk(2)
        return discriminator_loss(self.cfg.gan_type, real, fake)
