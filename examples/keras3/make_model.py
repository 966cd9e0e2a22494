"""Build the tiny Keras 3 example model for lockbuild and save it in MLflow format.

Run with the venv that has tensorflow-cpu==2.21.0 + mlflow-skinny==3.17.2 + pandas + scipy
(mlflow.tensorflow imports pandas and infer_signature imports scipy, but mlflow-skinny
pulls in neither; full `mlflow` would); `make_venv.sh` recreates exactly that venv:

    .venv/bin/python make_model.py   (after `bash make_venv.sh`)

Writes (next to this file, replacing what was there):
    model/            MLflow model (tensorflow flavor, Keras 3 native file data/model.keras)
    predictions.json  the /invocations body and the predictions the model returns for it

The data are synthetic and generated here from a fixed seed; nothing is downloaded.
"""

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from importlib.metadata import version

# Determinism knobs must be set before TensorFlow is imported.
os.environ.setdefault("PYTHONHASHSEED", "0")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mlflow  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import mlflow.tensorflow  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402

SEED = 0
HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(HERE, "model")
PREDICTIONS_PATH = os.path.join(HERE, "predictions.json")

# Rows sent to the scoring server. Values are exactly representable in float32,
# so JSON -> float32 parsing on the server gives the very same tensor.
EXAMPLE_ROWS = [
    [0.5, -1.25, 2.0, 0.0],
    [-0.75, 0.25, -1.5, 1.0],
    [1.5, 1.5, 0.5, -2.0],
    [0.0, -0.5, -0.25, 0.75],
]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    tf.keras.utils.set_random_seed(seed)  # python, numpy and TF/Keras backend seeds
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)


def make_data(n: int = 512):
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(n, 4)).astype("float32")
    w = np.array(
        [[1.0, -1.0, 0.5], [0.5, 1.0, -1.0], [-1.0, 0.5, 1.0], [0.25, -0.5, 0.75]],
        dtype="float32",
    )
    logits = x @ w + rng.normal(scale=0.1, size=(n, 3)).astype("float32")
    y = np.argmax(logits, axis=1).astype("int64")
    return x, y


def build_model() -> tf.keras.Model:
    model = tf.keras.Sequential(
        [
            tf.keras.Input(shape=(4,), dtype="float32", name="features"),
            tf.keras.layers.Dense(8, activation="relu", name="hidden"),
            tf.keras.layers.Dense(3, activation="softmax", name="probs"),
        ],
        name="keras3_classifier",
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def pinned(dist: str) -> str:
    return f"{dist}=={version(dist)}"


def main() -> None:
    # Nothing here talks to a tracking server, but mlflow.pyfunc.load_model sets up
    # MLflow tracing, which (MLflow 2.22) creates a file store ./mlruns in the working
    # directory. Point the tracking URI at a throwaway directory instead.
    with tempfile.TemporaryDirectory(prefix="lockbuild-example-mlruns-") as tracking_dir:
        mlflow.set_tracking_uri("file://" + tracking_dir)
        build_and_save()


def build_and_save() -> None:
    seed_everything(SEED)
    x, y = make_data()
    model = build_model()
    history = model.fit(x, y, epochs=5, batch_size=32, shuffle=True, verbose=0)
    print("final loss/acc:", history.history["loss"][-1], history.history["accuracy"][-1])

    example = np.array(EXAMPLE_ROWS, dtype="float32")
    signature = infer_signature(example, model.predict(example, verbose=0))

    # Left to itself, MLflow 3.17.2 infers
    #     mlflow==3.17.2, cloudpickle==3.1.3, tensorflow-cpu==2.21.0, tensorflow==2.21.0
    # i.e. it adds its default `tensorflow==<tf.__version__>` pin next to the inferred
    # tensorflow-cpu, which would drag in the full `tensorflow` wheel. So pin explicitly,
    # with exact versions of what is installed here. MLflow convention: `mlflow==X`
    # even though mlflow-skinny is what is installed.
    pip_requirements = [
        f"mlflow=={version('mlflow-skinny')}",
        pinned("cloudpickle"),
        pinned("tensorflow-cpu"),
        pinned("keras"),
        pinned("numpy"),
    ]

    if os.path.exists(MODEL_DIR):
        shutil.rmtree(MODEL_DIR)
    mlflow.tensorflow.save_model(
        model,
        path=MODEL_DIR,
        input_example=example,
        signature=signature,
        pip_requirements=pip_requirements,
    )

    # Load back exactly the way the scoring server does and record its answer.
    body = {"inputs": EXAMPLE_ROWS}
    loaded = mlflow.pyfunc.load_model(MODEL_DIR)
    preds = loaded.predict(np.array(body["inputs"], dtype="float32"))
    preds = np.asarray(preds).tolist()
    with open(PREDICTIONS_PATH, "w") as f:
        json.dump({"input": body, "predictions": preds, "tolerance": 1e-5}, f, indent=2)
        f.write("\n")

    weights_digest = hashlib.sha256(
        b"".join(np.asarray(w).tobytes() for w in model.get_weights())
    ).hexdigest()
    print("python", sys.version.split()[0], "| tensorflow", tf.__version__,
          "| keras", version("keras"), "| mlflow", mlflow.__version__)
    print("weights sha256:", weights_digest)
    print("predictions:", preds)


if __name__ == "__main__":
    main()
