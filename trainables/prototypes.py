"""Job: pick prototypes of each cluster of ambiguous images, and draw them.

The last step of "Finding Patterns in Ambiguous Images": the ambiguous images (`trainables/
ambiguous.py`) have been clustered (by another step, which writes the folder format defined here:
`save_clustering_result` / `load_clustering_result`, so both sides share one definition). A
researcher looks at each cluster through a few of its members:

- the medoid: the member with the smallest summed distance to the others, the cluster's most
  typical image that really exists (a mean image would be a blur);
- representatives: the k members nearest the cluster centre (the mean), the medoid left out,
  showing the cluster's spread around its typical image;
- ambiguous: the k members with C(x) nearest 0.5, where the classifier is most undecided.

Distances are measured in `space`: the classifier embedding (default: the space the classifier
decides in) or the clustering's reduced space. The job writes, into its workdir, one 28x28 PNG per
prototype (`images/`), `prototypes.parquet` (one row per pick), one grid per cluster (`grids/`),
`scatter.png` (the 2-D view coloured by cluster and by C) and `summary.txt`.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trainables.definitions import JobDef, Metric, Output
from trainables.plotting import pyplot
from trainables.reporter import Reporter

CLUSTERING_ARRAYS = "clustering.npz"
CLUSTERING_JSON = "clustering.json"
NOISE = -1  # the label of images in no cluster (HDBSCAN's convention)
KINDS = ("medoid", "representative", "ambiguous")  # the order of a cluster's rows everywhere
PARQUET_COLUMNS = ("cluster", "kind", "rank", "score", "x", "y", "index", "image")
MEDOID_WORKING_MEMORY = 64  # MiB of distances summed at a time (sklearn's default, 1 GiB, holds 11k x 11k)
SUMMARY_CLUSTERS = 12  # clusters printed one per line; the rest are counted (summary.txt has all)

Kind = Literal["medoid", "representative", "ambiguous"]


# ---------------------------------------------------------------------------------------------
# The clustering result folder: written by the clustering step, read by this job.
# ---------------------------------------------------------------------------------------------

# eq=False: numpy arrays have no single truth value, so a generated __eq__ (and __hash__) would raise.
@dataclass(frozen=True, eq=False)
class ClusteringResultData:
    """Everything a clustering step hands on; arrays are coerced to the documented dtypes."""

    images: np.ndarray  # (N, 1, H, W) float32 in [0, 1]
    scores: np.ndarray  # (N,) float32: C(x) = P(second class)
    embeddings: np.ndarray  # (N, D) float32: the classifier's penultimate layer
    reduced: np.ndarray  # (N, d) float32: the space the clusterer ran in
    labels: np.ndarray  # (N,) int64: cluster id, NOISE (-1) for none
    coords: np.ndarray  # (N, 2) float32: a 2-D view for plots
    reducer: Mapping[str, Any]  # {"kind": "umap", ...its settings}
    clusterer: Mapping[str, Any]  # {"kind": "hdbscan", ...its settings}
    metrics: Mapping[str, Any] = field(default_factory=dict)  # the clustering's scores (JSON values)
    classes: tuple[int, ...] = ()  # the classifier's classes: C(x) = P(classes[1])
    band: tuple[float, float] = (0.4, 0.6)  # the C(x) band the images were kept in
    generated: int = 0  # images generated to find these N

    def __post_init__(self) -> None:
        for name, dtype in (("images", np.float32), ("scores", np.float32), ("embeddings", np.float32),
                            ("reduced", np.float32), ("labels", np.int64), ("coords", np.float32)):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=dtype))
        object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        object.__setattr__(self, "band", tuple(float(b) for b in self.band))
        count = len(self.scores)
        expected = {"images": 4, "scores": 1, "embeddings": 2, "reduced": 2, "labels": 1, "coords": 2}
        for name, ndim in expected.items():
            array = getattr(self, name)
            if array.ndim != ndim or len(array) != count:
                raise ValueError(f"clustering result: {name} has shape {array.shape}; expected {ndim} dimensions "
                                 f"and N = {count} rows (the length of scores)")
        if self.images.shape[1] != 1 or self.coords.shape[1] != 2:
            raise ValueError(f"clustering result: images must be (N, 1, H, W) and coords (N, 2), got "
                             f"{self.images.shape} and {self.coords.shape}")
        if count and self.labels.min() < NOISE:
            raise ValueError(f"clustering result: labels are cluster ids >= 0 or {NOISE} for noise, "
                             f"got {int(self.labels.min())}")
        for name in ("reducer", "clusterer"):
            settings = getattr(self, name)
            if not isinstance(settings, Mapping) or not isinstance(settings.get("kind"), str):
                raise ValueError(f"clustering result: {name} must be a mapping with a 'kind' string, "
                                 f"got {settings!r}")
        if len(self.band) != 2:
            raise ValueError(f"clustering result: band must be (low, high), got {self.band}")

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def clusters(self) -> list[int]:
        """The cluster ids, ascending, noise excluded."""
        return sorted(int(c) for c in np.unique(self.labels) if c != NOISE)


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity (a silhouette of one cluster is NaN): they are written as null."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        write(handle)
    os.replace(tmp, path)


def save_clustering_result(folder: str | os.PathLike, result: ClusteringResultData) -> Path:
    """Write `clustering.npz` and `clustering.json` into `folder`, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(folder / CLUSTERING_ARRAYS, lambda handle: np.savez_compressed(
        handle, images=result.images, scores=result.scores, embeddings=result.embeddings, reduced=result.reduced,
        labels=result.labels, coords=result.coords))
    described = {"reducer": result.reducer, "clusterer": result.clusterer, "metrics": result.metrics,
                 "classes": list(result.classes), "band": list(result.band), "generated": int(result.generated)}
    text = json.dumps(_json_safe(described), indent=2, allow_nan=False) + "\n"
    _write_atomically(folder / CLUSTERING_JSON, lambda handle: handle.write(text.encode()))
    return folder


def load_clustering_result(folder: str | os.PathLike) -> ClusteringResultData:
    """Read a folder written by `save_clustering_result`; errors name the folder and what it lacks."""
    folder = Path(folder)
    missing = [name for name in (CLUSTERING_ARRAYS, CLUSTERING_JSON) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not a clustering result (no {' or '.join(missing)} inside)")
    described = json.loads((folder / CLUSTERING_JSON).read_text())
    with np.load(folder / CLUSTERING_ARRAYS, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in ("images", "scores", "embeddings", "reduced", "labels", "coords")
                  if name in stored.files}
    absent = [name for name in ("images", "scores", "embeddings", "reduced", "labels", "coords")
              if name not in arrays] + [name for name in ("reducer", "clusterer") if name not in described]
    if absent:
        raise ValueError(f"{folder}: clustering result lacks {', '.join(absent)}")
    return ClusteringResultData(**arrays, reducer=described["reducer"], clusterer=described["clusterer"],
                                metrics=described.get("metrics", {}), classes=tuple(described.get("classes", ())),
                                band=tuple(described.get("band", (0.4, 0.6))),
                                generated=int(described.get("generated", 0)))


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrototypesConfig:
    clustering: str  # a clustering result folder: `inputs: {clustering: clustering.best}`
    k: int = 5  # representative and ambiguous members per cluster
    space: Literal["embedding", "reduced"] = "embedding"  # where medoid and centre distances are measured

    def __post_init__(self) -> None:
        if not self.clustering:
            raise ValueError("clustering is empty: give a clustering result folder, normally by reference "
                             "(inputs: {clustering: STAGE.best})")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.space not in ("embedding", "reduced"):
            raise ValueError(f"space must be 'embedding' or 'reduced', got {self.space!r}")


@dataclass(frozen=True)
class Prototype:
    """One pick: a row of prototypes.parquet. `x`, `y` and `image` are filled in by `run`."""

    cluster: int
    kind: Kind
    rank: int  # 1 = the best of its kind in its cluster
    index: int  # row in the clustering arrays
    score: float  # C(x) of that image
    x: float = math.nan  # its 2-D view coordinates
    y: float = math.nan
    image: str = ""  # its PNG, relative to the job's output folder


def medoid_index(points: np.ndarray, working_memory: float = MEDOID_WORKING_MEMORY) -> int:
    """Row of `points` with the smallest summed Euclidean distance to the others (first on ties).

    The distances are summed chunk by chunk (sklearn's `working_memory`, in MiB), so a 5000-member
    cluster never holds its 5000 x 5000 distance matrix (190 MiB) at once.
    """
    from sklearn.metrics import pairwise_distances_chunked

    points = np.asarray(points, dtype=np.float64)
    if len(points) == 0:
        raise ValueError("medoid_index needs at least one point")
    sums = np.concatenate(list(pairwise_distances_chunked(
        points, reduce_func=lambda chunk, start: chunk.sum(axis=1), working_memory=working_memory)))
    return int(np.argmin(sums))


def select_prototypes(points: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int,
                      working_memory: float = MEDOID_WORKING_MEMORY) -> list[Prototype]:
    """Medoid, k representatives and k ambiguous members of every cluster, by cluster id.

    Noise (label -1) is never picked. A cluster with fewer members than k gives all it has. The
    ambiguous picks may repeat the medoid or a representative: each list answers its own question.
    Ties go to the lower row index, so a selection is reproducible.
    """
    points, labels, scores = np.asarray(points, dtype=np.float64), np.asarray(labels), np.asarray(scores)
    if points.ndim != 2 or labels.shape != (len(points),) or scores.shape != (len(points),):
        raise ValueError(f"points must be (N, D) with (N,) labels and scores, got {points.shape}, {labels.shape} "
                         f"and {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    picks: list[Prototype] = []
    for cluster in sorted(int(c) for c in np.unique(labels) if c != NOISE):
        members = np.flatnonzero(labels == cluster)  # ascending rows: stable sorts break ties by row
        member_points = points[members]
        medoid = int(members[medoid_index(member_points, working_memory)])

        def pick(kind: Kind, rows: np.ndarray) -> None:
            picks.extend(Prototype(cluster, kind, rank, int(row), float(scores[row]))
                         for rank, row in enumerate(rows, start=1))

        pick("medoid", np.array([medoid]))
        to_centre = np.linalg.norm(member_points - member_points.mean(axis=0), axis=1)
        order = members[np.argsort(to_centre, kind="stable")]
        pick("representative", order[order != medoid][:k])
        pick("ambiguous", members[np.argsort(np.abs(scores[members] - 0.5), kind="stable")][:k])
    return picks


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------

def write_prototypes_parquet(rows: Sequence[Prototype], path: str | os.PathLike) -> Path:
    """One row per pick, columns exactly PARQUET_COLUMNS with fixed types (also when empty)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("cluster", pa.int64()), ("kind", pa.string()), ("rank", pa.int64()),
                        ("score", pa.float64()), ("x", pa.float64()), ("y", pa.float64()),
                        ("index", pa.int64()), ("image", pa.string())])
    table = pa.table({name: [getattr(row, name) for row in rows] for name in PARQUET_COLUMNS}, schema=schema)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def _undecided_colour(score: float) -> tuple[float, float, float]:
    """As in sample_grid_png: green on the boundary (C = 0.5), red when fully confident."""
    undecided = 1 - 2 * abs(0.5 - score)
    return (1 - undecided, 0.6 * undecided, 0.0)


def _png(figure) -> bytes:
    plt = pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def cluster_grid_png(images: np.ndarray, prototypes: Sequence[Prototype], title: str = "") -> bytes:
    """PNG of one cluster's picks: a labelled row per kind (medoid, representative, ambiguous),
    C(x) under each image. `images` are the clustering's images, indexed by `Prototype.index`."""
    rows = [(kind, [p for p in prototypes if p.kind == kind]) for kind in KINDS]
    rows = [(kind, picks) for kind, picks in rows if picks]
    if not rows:
        raise ValueError("cluster_grid_png needs at least one prototype")
    columns = max(len(picks) for _, picks in rows)
    height, width = images.shape[-2:]
    pad, gap, margin = 2, 10, 2 * width  # gap: room for C under an image; margin: for the row labels
    canvas = np.ones(((height + gap) * len(rows) + pad, margin + (width + pad) * columns + pad), dtype=np.float32)
    for row, (_, picks) in enumerate(rows):
        for column, pick in enumerate(picks):
            top, left = pad + row * (height + gap), margin + pad + column * (width + pad)
            canvas[top:top + height, left:left + width] = np.clip(images[pick.index, 0], 0, 1)
    plt = pyplot()
    scale = 0.6 / (width + pad)  # inches per canvas pixel, as in sample_grid_png
    figure, axis = plt.subplots(figsize=(canvas.shape[1] * scale + 0.2,
                                         canvas.shape[0] * scale + (0.45 if title else 0.2)))
    axis.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                extent=(0, canvas.shape[1], canvas.shape[0], 0))
    for row, (kind, picks) in enumerate(rows):
        top = pad + row * (height + gap)
        axis.text(margin - 1, top + height / 2, kind, ha="right", va="center", fontsize=6)
        for column, pick in enumerate(picks):
            axis.text(margin + pad + column * (width + pad) + width / 2, top + height + 0.5, f"{pick.score:.2f}",
                      ha="center", va="top", fontsize=6, color=_undecided_colour(pick.score))
    axis.axis("off")
    if title:
        axis.set_title(title, fontsize=7)
    figure.tight_layout(pad=0.2)
    return _png(figure)


def scatter_png(coords: np.ndarray, labels: np.ndarray, scores: np.ndarray, medoids: Sequence[int] = (),
                title: str = "") -> bytes:
    """Two panels of the 2-D view: by cluster (noise light grey) and by C(x); `medoids` (rows) starred.

    The score colours are centred on 0.5 (white) and span the scores present: ambiguous images all
    lie in a narrow band, which a fixed 0..1 scale would paint one pale colour."""
    coords, labels, scores = np.asarray(coords), np.asarray(labels), np.asarray(scores)
    medoids = np.asarray(medoids, dtype=np.int64)
    plt = pyplot()
    size = float(np.clip(3000 / max(len(coords), 1), 2, 30))
    figure, (by_cluster, by_score) = plt.subplots(1, 2, figsize=(11, 4.8))
    noise = labels == NOISE
    by_cluster.scatter(coords[noise, 0], coords[noise, 1], s=size, c="#d0d0d0", linewidths=0,
                       label=f"noise ({int(noise.sum())})")
    clusters = sorted(int(c) for c in np.unique(labels[~noise]))
    palette = plt.get_cmap("tab10" if len(clusters) <= 10 else "tab20")  # tab20 pairs similar shades
    for position, cluster in enumerate(clusters):
        members = labels == cluster
        by_cluster.scatter(coords[members, 0], coords[members, 1], s=size, color=palette(position % palette.N),
                           linewidths=0)
    spread = float(np.max(np.abs(scores - 0.5), initial=0.0)) or 0.5
    points = by_score.scatter(coords[:, 0], coords[:, 1], s=size, c=scores, cmap="coolwarm", vmin=0.5 - spread,
                              vmax=0.5 + spread, linewidths=0)
    figure.colorbar(points, ax=by_score, label="C(x)")
    for axis in (by_cluster, by_score):
        if len(medoids):
            axis.scatter(coords[medoids, 0], coords[medoids, 1], s=90, marker="*", c="black",
                         edgecolors="white", linewidths=0.6, label="medoid")
        axis.set_xticks([])
        axis.set_yticks([])
    for row in medoids:
        by_cluster.annotate(str(int(labels[row])), coords[row], textcoords="offset points", xytext=(4, 4),
                            fontsize=7, weight="bold")
    by_cluster.set_title("by cluster (light grey: noise)", fontsize=9)
    by_score.set_title("by classifier score C(x)", fontsize=9)
    by_cluster.legend(loc="best", fontsize=7, markerscale=1.5)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _png(figure)


def save_image_png(image: np.ndarray, path: Path) -> None:
    """A (1, H, W) image in [0, 1] as an H x W 8-bit grayscale PNG (PIL comes with matplotlib)."""
    from PIL import Image

    pixels = np.clip(np.rint(np.asarray(image)[0] * 255), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")


def cluster_lines(result: ClusteringResultData, prototypes: Sequence[Prototype],
                  limit: int | None = None) -> list[str]:
    """One line per cluster ("cluster 3: 57 images, C mean 0.49, medoid #123 (C=0.51)"), the
    first `limit` of them then "... and N more"."""
    medoids = {p.cluster: p for p in prototypes if p.kind == "medoid"}
    lines = []
    for cluster, medoid in sorted(medoids.items()):
        members = result.labels == cluster
        lines.append(f"cluster {cluster}: {int(members.sum())} images, C mean {result.scores[members].mean():.2f}, "
                     f"medoid #{medoid.index} (C={medoid.score:.2f})")
    if limit is not None and len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def _describe(settings: Mapping[str, Any]) -> str:
    return settings["kind"] + "".join(f", {key}={value}" for key, value in settings.items() if key != "kind")


def run(config: PrototypesConfig, reporter: Reporter, workdir: Path) -> dict[str, float]:
    """The job: select each cluster's prototypes, write their images, table, grids and plots."""
    result = load_clustering_result(config.clustering)
    if not result.clusters:
        raise ValueError(f"{config.clustering}: every one of the {len(result)} images is noise, so there is "
                         "no cluster to pick prototypes from; choose a clustering that found clusters "
                         "(e.g. a smaller min_cluster_size)")
    points = result.embeddings if config.space == "embedding" else result.reduced
    picks = select_prototypes(points, result.labels, result.scores, config.k)

    workdir = Path(workdir)
    for folder in ("images", "grids"):
        (workdir / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for pick in picks:
        image = f"images/c{pick.cluster:02d}_{pick.kind}_{pick.rank}.png"
        save_image_png(result.images[pick.index], workdir / image)
        x, y = (float(v) for v in result.coords[pick.index])
        rows.append(replace(pick, x=x, y=y, image=image))
    write_prototypes_parquet(rows, workdir / "prototypes.parquet")

    positive = f"P(class {result.classes[1]}) of {'/'.join(map(str, result.classes))}" if len(
        result.classes) == 2 else "P(second class)"
    for cluster in result.clusters:
        size = int((result.labels == cluster).sum())
        title = f"cluster {cluster}: {size} images; C = {positive}"
        (workdir / "grids" / f"cluster_{cluster:02d}.png").write_bytes(
            cluster_grid_png(result.images, [row for row in rows if row.cluster == cluster], title))
    medoids = [row.index for row in rows if row.kind == "medoid"]
    (workdir / "scatter.png").write_bytes(scatter_png(
        result.coords, result.labels, result.scores, medoids,
        title=f"{len(result)} ambiguous images, {len(result.clusters)} clusters ({_describe(result.reducer)}; "
              f"{_describe(result.clusterer)})"))

    clustered = result.labels != NOISE
    ambiguous = [row.score for row in rows if row.kind == "ambiguous"]
    metrics = {
        "clusters": float(len(result.clusters)),
        "prototypes": float(len(rows)),
        "images": float(len(result)),
        "noise_fraction": float(np.mean(~clustered)),
        "mean_score_ambiguous": float(np.mean(np.abs(np.asarray(ambiguous) - 0.5))),
        "mean_score_clustered": float(np.mean(np.abs(result.scores[clustered] - 0.5))),
    }
    header = (f"prototypes: {len(result.clusters)} clusters of {len(result)} ambiguous images "
              f"({metrics['noise_fraction']:.0%} noise), {len(rows)} picks (k={config.k}, space={config.space})")
    summary = [header, f"source: {config.clustering}",
               f"images: {result.generated} generated, kept with C in [{result.band[0]:g}, {result.band[1]:g}]; "
               f"C = {positive}",
               f"reducer: {_describe(result.reducer)}", f"clusterer: {_describe(result.clusterer)}",
               f"clustering metrics: {json.dumps(_json_safe(result.metrics))}",
               f"mean |C - 0.5|: {metrics['mean_score_ambiguous']:.3f} over the ambiguous picks, "
               f"{metrics['mean_score_clustered']:.3f} over all clustered images", "",
               *cluster_lines(result, rows)]
    (workdir / "summary.txt").write_text("\n".join(summary) + "\n")
    print("\n".join([header, *cluster_lines(result, rows, SUMMARY_CLUSTERS)]), flush=True)
    reporter.report(metrics)
    return metrics


PROTOTYPES = JobDef(
    name="prototypes",
    config_cls=PrototypesConfig,
    run=run,
    metrics=(
        Metric("clusters", higher_is_better=True, description="clusters found (noise excluded)"),
        Metric("prototypes", higher_is_better=True,
               description="picks written: per cluster a medoid, k representatives and k ambiguous members"),
        Metric("images", higher_is_better=True, description="ambiguous images in the clustering result"),
        Metric("noise_fraction", higher_is_better=False, description="share of the images in no cluster"),
        Metric("mean_score_ambiguous", higher_is_better=False,
               description="mean |C - 0.5| of the ambiguous picks: 0 = all on the decision boundary"),
        Metric("mean_score_clustered", higher_is_better=False,
               description="mean |C - 0.5| over every clustered image, the baseline for mean_score_ambiguous"),
    ),
    description="per cluster of ambiguous images: medoid, representatives and most ambiguous members, "
                "as images, a parquet table, grids and a scatter plot",
    tiny_config={"k": 2},
    contract_inputs=lambda upstream: {"clustering": upstream.objective("clustering")},
    outputs={"scatter": Output("picture", "scatter.png"), "summary": Output("text", "summary.txt"),
             "grids": Output("gallery", "grids", caption="prototypes of one cluster"),
             "images": Output("images", "images"), "table": Output("data", "prototypes.parquet"),
             # the clustering result the picks index: later stages take it as `prototypes.clustering`
             "clustering": Output("clustering", from_config="clustering")},
)
