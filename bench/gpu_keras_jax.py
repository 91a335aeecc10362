"""GPU check of the ported EfficientNet-Lite0 backbone: same Keras 3 model.json + safetensors,
run under Keras' JAX backend (the device image has JAX+CUDA, not TensorFlow).
Checks the predictions match the CPU/TensorFlow reference and measures model-only throughput."""
import json
import os
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

out = os.environ.get("OUT", "/tmp")
report = {"jax": jax.__version__, "keras": keras.__version__, "devices": [str(d) for d in jax.devices()]}
d = os.environ.get("BACKBONE_DIR", "var-device/backbone")
model = keras.models.model_from_json(Path(f"{d}/model.json").read_text())
weights = load_file(f"{d}/weights.safetensors")
missing = [v.path for v in model.weights if v.path not in weights]
report["missing_weights"] = missing
for v in model.weights:
    v.assign(weights[v.path])
ref = json.loads((Path(os.environ.get("REF_DIR", "var-device")) / "cpu_ref.json").read_text())
x = np.load(os.path.join(os.environ.get("REF_DIR", "var-device"), "coffee224.npy"))
y = model.predict_on_batch(x)
probs = np.asarray(y["probs"])[0]
top = np.argsort(-probs)[:5]
report["top5_gpu"] = top.tolist()
report["probs_gpu"] = probs[top].tolist()
report["top5_cpu"] = ref["top5"]
report["max_abs_prob_diff_top5"] = float(np.max(np.abs(probs[ref["top5"]] - np.array(ref["probs"]))))
rows = []
rng = np.random.default_rng(0)
for bs in (1, 8, 32, 128, 256, 512):
    batch = rng.integers(0, 255, size=(bs, 224, 224, 3), dtype=np.uint8)
    for _ in range(3):
        r = model.predict_on_batch(batch)
        np.asarray(r["probs"])
    times = []
    t_end = time.perf_counter() + 3.0
    while time.perf_counter() < t_end or len(times) < 5:
        t0 = time.perf_counter()
        r = model.predict_on_batch(batch)
        np.asarray(r["probs"])
        np.asarray(r["embedding"])
        times.append(time.perf_counter() - t0)
    times.sort()
    p50 = times[len(times) // 2]
    rows.append({"batch": bs, "calls": len(times), "p50_ms": round(p50 * 1000, 3),
                 "min_ms": round(times[0] * 1000, 3), "img_per_s_p50": round(bs / p50, 1)})
    print(rows[-1], flush=True)
report["throughput"] = rows
print(json.dumps(report, indent=1))
Path(f"{out}/gpu_check.json").write_text(json.dumps(report, indent=1))
