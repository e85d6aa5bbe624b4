"""A grid of generated images as a PNG, optionally with a score under each image.

GASTeN's point is visual: realistic digits the classifier cannot decide on. A researcher wants to
*see* them next to the classifier's output, so the grid writes C(x) under each image and colours
it by how undecided it is (green near 0.5, red near 0 or 1).
"""

from __future__ import annotations

import io

import torch

from trainables.plotting import pyplot


def sample_grid_png(images: torch.Tensor, scores: torch.Tensor | None = None, title: str = "",
                    columns: int = 8, score_label: str = "C") -> bytes:
    """PNG bytes of (N, 1, H, W) images in [0, 1], laid out `columns` wide."""
    plt = pyplot()
    images = images.detach().float().cpu().clamp(0, 1)
    count = len(images)
    if count == 0:
        raise ValueError("sample_grid_png needs at least one image")
    columns = min(columns, count)
    rows = -(-count // columns)
    height, width = images.shape[-2:]
    pad = 2
    gap = 10 if scores is not None else pad  # room under each image for its score
    canvas = torch.ones((height + gap) * rows + pad, (width + pad) * columns + pad)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = pad + row * (height + gap), pad + column * (width + pad)
        canvas[top:top + height, left:left + width] = image[0]
    scale = 0.6 / (width + pad)  # inches per canvas pixel
    figure, axis = plt.subplots(figsize=(canvas.shape[1] * scale + 0.2,
                                         canvas.shape[0] * scale + (0.45 if title else 0.2)))
    axis.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                extent=(0, canvas.shape[1], canvas.shape[0], 0))
    if scores is not None:
        scores = scores.detach().float().cpu()
        for index, score in enumerate(scores.tolist()):
            row, column = divmod(index, columns)
            undecided = 1 - 2 * abs(0.5 - score)  # 1 on the boundary, 0 when fully confident
            axis.text(pad + column * (width + pad) + width / 2, pad + row * (height + gap) + height + 0.5,
                      f"{score:.2f}", ha="center", va="top", fontsize=6,
                      color=(1 - undecided, 0.6 * undecided, 0.0))
    axis.axis("off")
    if title:
        axis.set_title(title + (f"  ({score_label} = classifier output under each image)" if scores is not None
                                else ""), fontsize=7)
    figure.tight_layout(pad=0.2)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
