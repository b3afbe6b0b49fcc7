"""Feature response maps of your images (paper Fig. 2):  python -m mgn_tf.visualize [--flag=value ...]
(or mgn-visualize)

    python -m mgn_tf.visualize --weights runs/market --images who.jpg,cams/ --out response_maps

For each image under --images (image files, folders searched recursively, list files: .txt, one path per
line), the L2 norm over channels at every location of the Global, Part-2 and Part-3 branch feature maps
(`mgn_tf.evaluation.response`), drawn as one PNG per image, <out>/<image stem>_response.png (a stem seen
before gets _2, _3, ...): the image, the Global map, the 2 Part-2 stripes and the 3 Part-3 stripes, each
overlaid as a heat map scaled to its own range. <out>/response_maps.json lists, per image, its figure and
where each map and stripe peaks. The maps need the Keras model: a run directory, checkpoint folder or
*.weights.h5 (a SavedModel, TFLite or ONNX file holds only the embedding). Images are read at the run's
input size unless --input_height/--input_width are given. Images that cannot be decoded are skipped and
listed.
Exit codes: 0 ok; 2 a bad flag, path, model or no readable image, one line `error: ...`.
"""

from __future__ import annotations

import time
from pathlib import Path

from absl import flags

from mgn_tf import cli
from mgn_tf.errors import ConfigError
from mgn_tf.files import atomic_write_json, unique_names
from mgn_tf.flags import input_size_from_flags
from mgn_tf.search import collect_images, report_skipped

F = flags.FLAGS
RESULTS_NAME = "response_maps.json"
KERAS_HINT = "a run directory, checkpoint folder or *.weights.h5"


def define_flags() -> list[str]:
    before = set(F)
    flags.DEFINE_string("weights", None, f"The Keras model: {KERAS_HINT}.")
    flags.DEFINE_list(
        "images", [], "Image files, folders (searched recursively) and list files (.txt: one path per line)."
    )
    flags.DEFINE_string("out", "response_maps", "Output folder for the PNGs and response_maps.json.")
    flags.DEFINE_integer("input_height", None, "Input height (default: the run's).")
    flags.DEFINE_integer("input_width", None, "Input width (default: the run's).")
    flags.DEFINE_integer("batch_size", 16, "Images per inference batch.")
    return [name for name in F if name not in before]


def figure_names(paths: list[str]) -> list[str]:
    """`<stem>_response.png` per path, in order; a stem taken before gets `_2`, `_3`, ... after it."""
    return [f"{stem}_response.png" for stem in unique_names([Path(p).stem for p in paths])]


def shown_path(path: str) -> str:
    """How a figure names its image: relative to the working directory when it lies below it (what the
    user typed, usually), else in full. results.json keeps the full path."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def check_weights(path: str | None) -> str:
    """`path` when it is a Keras model; ConfigError for a missing path or an exported format."""
    from mgn_tf.artifacts import detect_format

    if not path:
        raise ConfigError(f"--weights: give the model ({KERAS_HINT})")
    try:
        fmt = detect_format(path)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise ConfigError(f"--weights={path}: {str(exc).strip().splitlines()[0]}") from exc
    if fmt != "keras":
        raise ConfigError(
            f"--weights={path}: a {fmt} model gives only the embedding, not the branch feature maps; pass "
            f"the Keras weights it was exported from ({KERAS_HINT})"
        )
    return path


def load_model(path: str, input_size: tuple[int, int] | None):
    from mgn_tf.inference import load_training_model

    try:
        model, _ = load_training_model(path, input_size)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise ConfigError(f"--weights={path}: {str(exc).strip().splitlines()[0]}") from exc
    return model


def visualize(weights: str, paths: list[str], input_size, out: Path, batch_size: int) -> int:
    """Writes a figure per readable image and response_maps.json; ConfigError when none is readable."""
    import numpy as np

    from mgn_tf.evaluation import response
    from mgn_tf.images import ImageReadError, load_image

    started = time.perf_counter()
    model = load_model(weights, input_size)
    size = tuple(model.input_shape[1:3])
    responses = response.response_model(model)
    names = figure_names(paths)
    records, skipped = [], []
    for start in range(0, len(paths), batch_size):
        batch, pixels = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                pixels.append(load_image(paths[i], size))
                batch.append(i)
            except ImageReadError as exc:
                skipped.append({"path": paths[i], "error": str(exc)})
        maps = response.response_maps(responses, np.stack(pixels), batch_size) if batch else {}
        for k, i in enumerate(batch):
            one = response.image_maps(maps, k)
            maps_at = f"feature response maps (L2 norm over channels) at {size[0]}x{size[1]}"
            title = f"{shown_path(paths[i])}: {maps_at}"
            figure = response.plot_response_maps(pixels[k], one, out / names[i], title=title)
            records.append({"path": paths[i], "figure": str(figure), "maps": response.peaks(one)})
        print(f"Response maps: {min(start + batch_size, len(paths))}/{len(paths)} images", flush=True)
    report_skipped(skipped, "input")
    if not records:
        raise ConfigError(f"--images: none of the {len(paths)} image(s) can be read")
    record = {
        "weights": weights,
        "input_size": list(size),
        "map_sizes": {b: list(responses.output[b].shape[1:3]) for b in response.BRANCH_NAMES},
        "response": "L2 norm over the channels at each location of the branch's output feature map",
        "images": records,
        "skipped": skipped,
    }
    results = atomic_write_json(out / RESULTS_NAME, record)
    print(
        f"Wrote {len(records)} figure(s) and {results} in {time.perf_counter() - started:.1f} s"
        + (f"; skipped {len(skipped)} unreadable image(s)" if skipped else ""),
        flush=True,
    )
    return 0


def main(argv: list[str]) -> int:
    try:
        if F.batch_size < 1:
            raise ConfigError(f"--batch_size={F.batch_size}: must be >= 1")
        paths = collect_images([*F.images, *argv[1:]])  # images may also follow the flags
        weights = check_weights(F.weights)
        input_size = input_size_from_flags()
        cli.import_tensorflow()  # after the checks above: a bad flag is reported at once
        return visualize(weights, paths, input_size, Path(F.out), F.batch_size)
    except ConfigError as exc:
        return cli.error(exc)


def run() -> None:
    cli.run(main, define_flags, __doc__)


if __name__ == "__main__":
    run()
