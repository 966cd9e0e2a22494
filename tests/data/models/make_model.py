"""Make a tiny TensorFlow model the way users log it: MLflow's DEFAULT requirement inference.

No `pip_requirements`, no `extra_pip_requirements`: MLflow infers requirements.txt itself, in a
training venv that has `tensorflow-cpu` installed (the usual CPU setup). MLflow then writes both
`tensorflow-cpu==X` (the installed distribution) and `tensorflow==X` (the flavor's default pin).
lockbuild must lock and build these models with no spec edits (issue 10).

    python make_model.py keras3-tf221      # Keras 3 on TF 2.21, mlflow-skinny 3.17.2
    python make_model.py savedmodel-tf215  # tf.keras SavedModel on TF 2.15, mlflow-skinny 2.22.5
    python make_model.py tfkeras-tf221     # tf-keras (Keras 2) on TF 2.21, mlflow-skinny 3.17.2
    python make_model.py keras3-py310      # Keras 3 on TF 2.21 under Python 3.10 (3.12, 3.13 alike):
    python make_model.py keras3-py312      #   minors Debian does not ship (3.10, 3.12) and trixie's
    python make_model.py keras3-py313      #   3.13 (issue 21)
    python make_model.py keras3-macos      # Keras 3 on TF 2.16.2 with a Mac-style requirements file:
                                           #   tensorflow-macos + tensorflow-metal (pip_requirements)

Each kind has its venv recipe in make_venvs.sh and the resulting freeze in <kind>/venv-freeze.txt.
Writes <kind>/model/ (replacing it) and <kind>/predictions.json: the /invocations body and the
predictions the model returns for it at training time. Synthetic data from a fixed seed.
"""

import json
import os
import random
import shutil
import sys
import tempfile
from importlib.metadata import version

KIND = sys.argv[1] if len(sys.argv) > 1 else ""
# What a user on Apple silicon logs with pip_requirements=<their project's requirements file>.
MAC_REQUIREMENTS = ["tensorflow-macos==2.16.2", "tensorflow-metal==1.1.0"]
if KIND not in ("keras3-tf221", "savedmodel-tf215", "tfkeras-tf221", "keras3-py310", "keras3-py312", "keras3-py313",
                "keras3-macos"):
    sys.exit(__doc__)

os.environ.setdefault("PYTHONHASHSEED", "0")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if KIND == "tfkeras-tf221":
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # how tf-keras users get Keras 2 as tf.keras on TF >= 2.16

import mlflow  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import mlflow.tensorflow  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402

SEED = 0
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), KIND)
EXAMPLE_ROWS = [  # exactly representable in float32
    [0.5, -1.25, 2.0, 0.0],
    [-0.75, 0.25, -1.5, 1.0],
    [1.5, 1.5, 0.5, -2.0],
]


def main() -> None:
    random.seed(SEED)
    np.random.seed(SEED)
    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-1.0], [0.5], [0.25]], dtype="float32")).astype("float32")
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(4,), dtype="float32", name="features"),
        tf.keras.layers.Dense(8, activation="tanh", name="hidden"),
        tf.keras.layers.Dense(1, name="value"),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=0.01), loss="mse")
    model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    example = np.array(EXAMPLE_ROWS, dtype="float32")
    signature = infer_signature(example, model.predict(example, verbose=0))

    model_dir = os.path.join(OUT, "model")
    if os.path.exists(model_dir):
        shutil.rmtree(model_dir)
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lockbuild-mlruns-") as tracking:
        mlflow.set_tracking_uri("file://" + tracking)
        # MLflow's defaults: requirements inferred from what loading the model imports.
        extra = {"pip_requirements": MAC_REQUIREMENTS} if KIND == "keras3-macos" else {}
        mlflow.tensorflow.save_model(model, path=model_dir, input_example=example, signature=signature, **extra)
        body = {"inputs": EXAMPLE_ROWS}
        loaded = mlflow.pyfunc.load_model(model_dir)
        preds = np.asarray(loaded.predict(np.array(body["inputs"], dtype="float32"))).tolist()
    with open(os.path.join(OUT, "predictions.json"), "w") as f:
        json.dump({"input": body, "predictions": preds, "tolerance": 1e-5}, f, indent=2)
        f.write("\n")
    print("python", sys.version.split()[0], "| tensorflow", tf.__version__, "| mlflow", mlflow.__version__,
          "| keras", version("keras"))
    print(open(os.path.join(model_dir, "requirements.txt")).read())
    print("predictions:", preds)


if __name__ == "__main__":
    main()
