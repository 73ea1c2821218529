"""Per-batch augmentation on the training device, as explicit, storable view parameters.

Every augmented picture is described by five small integers per sample, ``params`` int16 [B, 5]:
``(top, left, height, width, flip)``, a crop box in source pixels (it may reach outside the image,
where it reads zeros: that is pad-and-crop) and a horizontal flip. ``apply_views`` renders a batch of
boxes back to the input size with one bilinear ``grid_sample`` call, on whatever device the images
are on. Because a view is just these integers, the teacher can label a view once, the cache can
store the integers beside its soft labels, and training can render exactly the same pixels again
later (Beyer et al., "Knowledge distillation: A good teacher is patient and consistent", CVPR 2022:
KD works when teacher and student see the same view).

The sampling follows the usual recipes: pad-and-crop (He et al. 2016, CIFAR ResNets) and
random-resized-crop (Szegedy et al. 2015, the "Inception" crop, as in torchvision's
RandomResizedCrop). Parameters are drawn from a ``torch.Generator`` on the CPU, so a (seed, epoch,
step) triple gives the same views on any device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from kdflow.config import AugmentConfig
from kdflow.storage.digest import digest_of

PARAMS = 5  # top, left, height, width, flip


def spec(cfg: AugmentConfig) -> dict:
    """What determines the sampled views (and so the teacher's labels of them): part of cache keys.

    Only the settings the chosen crop uses are included, so an unused one (padding under
    ``crop: resized``) does not change a key.
    """
    out: dict = {"crop": cfg.crop, "flip": cfg.flip}
    if cfg.crop == "pad":
        out["padding"] = cfg.padding
    elif cfg.crop == "resized":
        out["scale"], out["ratio"] = list(cfg.scale), list(cfg.ratio)
    return out


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded from any tuple of values (seed, epoch, step; or seed, split, view)."""
    return torch.Generator().manual_seed(int(digest_of([str(p) for p in parts])[:15], 16))


def identity(n: int, height: int, width: int) -> torch.Tensor:
    """Parameters of the un-augmented picture: int16 [n, 5]."""
    return torch.tensor([0, 0, height, width, 0], dtype=torch.int16).repeat(n, 1)


def sample(cfg: AugmentConfig, n: int, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """Draw ``n`` views: int16 [n, 5] (top, left, height, width, flip)."""
    out = identity(n, height, width).long()
    if cfg.crop == "pad":
        p = cfg.padding
        out[:, 0] = torch.randint(-p, p + 1, (n,), generator=gen)
        out[:, 1] = torch.randint(-p, p + 1, (n,), generator=gen)
    elif cfg.crop == "resized":
        out[:, :4] = _resized_boxes(cfg, n, height, width, gen)
    if cfg.flip:
        out[:, 4] = torch.randint(0, 2, (n,), generator=gen)
    return out.to(torch.int16)


def _resized_boxes(cfg: AugmentConfig, n: int, height: int, width: int, gen: torch.Generator,
                   attempts: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop sampling, vectorised: up to ``attempts`` tries per sample,
    the first box that fits wins; samples with none fall back to the whole image."""
    area = height * width
    target = area * torch.empty(n, attempts).uniform_(cfg.scale[0], cfg.scale[1], generator=gen)
    log_r = torch.empty(n, attempts).uniform_(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), generator=gen)
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    pick = first.clamp(min=0)
    h = torch.where(first >= 0, h[rows, pick], torch.full((n,), height))
    w = torch.where(first >= 0, w[rows, pick], torch.full((n,), width))
    # Offsets uniform over the valid range, drawn for every sample (fixed RNG consumption).
    top = (torch.rand(n, generator=gen) * (height - h + 1)).floor().long()
    left = (torch.rand(n, generator=gen) * (width - w + 1)).floor().long()
    return torch.stack([top, left, h, w], dim=1)


def apply_views(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Render views: images float [B, C, H, W], params int [B, 5] -> float [B, C, H, W].

    Output pixel j (of W) samples source column ``left + (j + 0.5) * width / W - 0.5``, clamped to
    the box: a box of the input's own size is an exact shift (pad-and-crop; outside the image reads
    zeros), a smaller one a bilinear resize of the crop whose edges repeat the crop's own border
    pixels, as cropping and then resizing would (torchvision's resized_crop). The grid is built
    element-wise (not with affine_grid's batched matmul), so a sample's pixels do not depend on
    which other samples share its batch.
    """
    b, _, height, width = images.shape
    p = params.to(device=images.device, dtype=torch.float32)
    top, left, h, w, flip = (t[:, None] for t in p.unbind(1))  # each [B, 1]
    cols = torch.arange(width, device=images.device, dtype=torch.float32)[None, :]  # [1, W]
    rows = torch.arange(height, device=images.device, dtype=torch.float32)[None, :]  # [1, H]
    cols = torch.where(flip > 0, width - 1 - cols, cols)  # mirror the output horizontally
    sx = torch.minimum(torch.maximum(left + (cols + 0.5) * w / width - 0.5, left), left + w - 1)  # [B, W]
    sy = torch.minimum(torch.maximum(top + (rows + 0.5) * h / height - 0.5, top), top + h - 1)  # [B, H]
    gx = ((2 * sx + 1) / width - 1)[:, None, :].expand(b, height, width)  # normalised to [-1, 1]
    gy = ((2 * sy + 1) / height - 1)[:, :, None].expand(b, height, width)
    grid = torch.stack([gx, gy], dim=-1)  # [B, H, W, 2], (x, y)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def params_for_split(cfg: AugmentConfig, split: str, view: int, n: int, height: int, width: int) -> np.ndarray:
    """The parameters of cached view ``view`` for every row of ``split``: int16 [n, 5].

    Seeded by (augment seed, split, view) alone, so view v is the same whichever other views an
    entry holds: an entry can grow from V to more views without recomputing the ones it has.
    """
    return sample(cfg, n, height, width, generator(cfg.seed, split, view)).numpy()
