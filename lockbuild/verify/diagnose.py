"""Known serve-time failure classes, recognised from a container's log and HTTP answers.

One table, read top to bottom; the first matching rule names the failure and the fix.
"""

from __future__ import annotations

import re

from lockbuild.verify.finding import Finding

RULES: list[tuple[str, str, str, str]] = [
    # (name, regex over log + responses, why it breaks, fix)
    ("numpy-abi", r"numpy\.dtype size changed|_ARRAY_API not found|numpy\.core\.multiarray failed to import|"
     r"compiled using NumPy 1\.x cannot be run in\s+NumPy 2",
     "a compiled extension was built against another numpy major (C-ABI mismatch)",
     "pin the numpy the model was logged with in [python] requirements (e.g. numpy<2) and re-lock"),
    ("protobuf", r"Descriptors cannot be created directly|google\.protobuf.*(?:TypeError|ImportError)|"
     r"cannot import name '.*' from 'google\.protobuf",
     "generated protobuf code does not match the installed protobuf runtime",
     "pin protobuf to the version the model's TensorFlow expects in [python] requirements and re-lock"),
    ("keras3-legacy-savedmodel", r"File format not supported: filepath=|Keras 3 only supports V3 `\.keras`|"
     r"legacy SavedModel format is not supported by `load_model\(\)` in Keras 3",
     "Keras 3 refuses a Keras 2 SavedModel: the model was saved with TF < 2.16 / tf.keras (Keras 2)",
     "serve it with the TensorFlow it was logged with (pin tensorflow-cpu==<logged> and keras<3), or add "
     'tf-keras and [image] env = { TF_USE_LEGACY_KERAS = "1" }'),
    ("pickle-protocol", r"unsupported pickle protocol|ValueError: unsupported pickle",
     "the model was pickled by a newer Python than the image runs",
     'set [target] python to the logged major.minor and re-lock'),
    ("missing-module", r"ModuleNotFoundError: No module named '([^']+)'|ImportError: No module named ([\w.]+)",
     "a module the model or server imports is not installed in the image",
     "add the distribution that provides it to [python] requirements (or remove it from [python] exclude) "
     "and re-lock"),
    ("missing-library", r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file",
     "a shared library a wheel needs is not in the Debian runtime",
     "add the Debian package that ships it to [target] packages and re-lock"),
]


def diagnose(text: str, *, legacy_keras_unset: bool = False, invocations_failed: bool = False,
             port_opened: bool = True, exited: bool = False) -> list[Finding]:
    found = []
    for name, pattern, why, fix in RULES:
        m = re.search(pattern, text)
        if m:
            detail = next((g for g in m.groups() if g), "") if m.groups() else ""
            found.append(Finding(name, "error", why + (f" ({detail})" if detail else ""), fix=fix))
    if legacy_keras_unset and invocations_failed:
        found.append(Finding(
            "tf-keras-without-legacy-flag", "error",
            "tf-keras is installed but TF_USE_LEGACY_KERAS=1 is not set: /ping answers 200 while /invocations "
            "fails, because tf.keras resolves to Keras 3",
            fix='[image] env = { TF_USE_LEGACY_KERAS = "1" } in lockbuild.toml, then re-lock and rebuild'))
    if not port_opened and not exited and not found:
        found.append(Finding("port-never-opened", "error", "the server never answered /ping on its port",
                             fix="check the log tail above; raise [smoke] timeout if the model loads slowly"))
    return found
