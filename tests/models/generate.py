#!/usr/bin/env python3
"""Generate the ONNX test models (scikit-learn + skl2onnx; LightGBM and XGBoost +
onnxmltools) and their reference data.

Usage: generate.py [--out DIR] [--bench] [--force]

For every model NAME it writes into DIR:

  NAME.onnx            the model
  NAME.rows.parquet    200 input rows (one column per model input / feature)
  NAME.expected.parquet  onnxruntime (Python) outputs for those rows, one column per ONNX output
  NAME.expected.json     the same outputs as raw tensors (exact float values)

plus the negative-test artifacts bad_*.{bin,onnx} and manifest.json, which describes
everything (see tests/models/README.md).  Everything is deterministic (fixed seeds,
single-threaded onnxruntime).  A stamp file (DIR/.stamp) holding a hash of this script
and tests/requirements.txt makes re-runs free when nothing changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
REQUIREMENTS = REPO / "tests" / "requirements.txt"
DEFAULT_OUT = HERE / "generated"

N_ROWS = 200
# Explicit opsets, so that the files do not change when skl2onnx's default moves.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
STAMP = ".stamp"
MANIFEST = "manifest.json"

CORE_MODELS = [
    "logreg",
    "logreg_nozipmap",
    "rf",
    "rf_nozipmap",
    "gbr",
    "gbc",
    "gbc3",
    "mlp",
    "pipeline",
    "linreg",
    # gradient boosting as people train it (LightGBM, XGBoost, scikit-learn's
    # HistGradientBoosting), on data with missing values, with NaN in the reference rows
    "lgbm_binary",
    "lgbm_multi",
    "lgbm_reg",
    "xgb_binary",
    "xgb_multi",
    "xgb_reg",
    "hgb_binary",
    "hgb_reg",
]
BENCH_MODELS = ["big_rf", "gb300", "logreg20", "lgbm300"]
BAD_ARTIFACTS = [
    "bad_not_onnx.bin",
    "bad_truncated.onnx",
    "bad_no_graph.onnx",
    "bad_external_abs.onnx",
    "bad_external_dotdot.onnx",
    "bad_raw_len.onnx",
    "bad_external_symlink.onnx",
    "bad_missing_input.onnx",
    "bad_custom_domain.onnx",
    "bad_constant_oom.onnx",
    "hog_runtime.onnx",
]


# --------------------------------------------------------------------------- stamp


def source_key() -> str:
    h = hashlib.sha256()
    for p in (Path(__file__).resolve(), REQUIREMENTS):
        h.update(p.name.encode())
        h.update(b"\0")
        h.update(p.read_bytes() if p.exists() else b"<missing>")
        h.update(b"\0")
    return h.hexdigest()


def model_files(name: str) -> list[str]:
    return [
        f"{name}.onnx",
        f"{name}.rows.parquet",
        f"{name}.expected.parquet",
        f"{name}.expected.json",
    ]


def group_files(group: str) -> list[str]:
    if group == "core":
        files = [f for m in CORE_MODELS for f in model_files(m)] + BAD_ARTIFACTS
    elif group == "bench":
        files = [f for m in BENCH_MODELS for f in model_files(m)]
    else:
        raise ValueError(group)
    return files


def read_stamp(out: Path) -> dict:
    try:
        return json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def up_to_date(out: Path, key: str, groups: list[str]) -> tuple[bool, list[str]]:
    """Returns (everything fine, groups that must be (re)generated)."""
    stamp = read_stamp(out)
    if stamp.get("key") != key or not (out / MANIFEST).exists():
        return False, groups
    have = set(stamp.get("groups", []))
    missing = []
    for g in groups:
        if g not in have or not all((out / f).exists() for f in group_files(g)):
            missing.append(g)
    return not missing, missing


# --------------------------------------------------------------------------- helpers


def sha256_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def onnx_type_str(tp) -> str:
    """ONNX TypeProto -> 'tensor(float)', 'seq(map(int64,tensor(float)))', ..."""
    import onnx

    which = tp.WhichOneof("value")
    if which == "tensor_type":
        return f"tensor({onnx.helper.tensor_dtype_to_string(tp.tensor_type.elem_type).removeprefix('TensorProto.').lower()})"
    if which == "sequence_type":
        return f"seq({onnx_type_str(tp.sequence_type.elem_type)})"
    if which == "map_type":
        k = onnx.helper.tensor_dtype_to_string(tp.map_type.key_type).removeprefix("TensorProto.").lower()
        return f"map({k},{onnx_type_str(tp.map_type.value_type)})"
    return which or "unknown"


def value_info_dict(vi) -> dict:
    d = {"name": vi.name, "type": onnx_type_str(vi.type)}
    if vi.type.WhichOneof("value") == "tensor_type":
        tt = vi.type.tensor_type
        d["elem_type"] = d["type"][len("tensor(") : -1]
        if tt.HasField("shape"):
            dims = []
            for dim in tt.shape.dim:
                if dim.HasField("dim_value"):
                    dims.append(dim.dim_value)
                elif dim.HasField("dim_param"):
                    dims.append(dim.dim_param)
                else:
                    dims.append(None)
            d["shape"] = dims
        else:
            d["shape"] = None
    return d


def signature(model_path: Path) -> dict:
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    opsets = {(o.domain or "ai.onnx"): o.version for o in m.opset_import}
    domains = {n.domain for n in m.graph.node}
    return {
        "ir_version": m.ir_version,
        "producer_name": m.producer_name,
        "producer_version": m.producer_version,
        "opset_imports": opsets,
        "uses_ai_onnx_ml": "ai.onnx.ml" in domains,
        "inputs": [value_info_dict(v) for v in m.graph.input],
        "outputs": [value_info_dict(v) for v in m.graph.output],
    }


def ort_session(model_bytes: bytes, quiet: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if quiet:
        so.log_severity_level = 4  # the failure is expected; keep the log clean
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def write_model(out: Path, name: str, onx) -> Path:
    # skl2onnx names the graph with a random uuid and emits opset imports in set order:
    # pin both so the bytes are reproducible.
    onx.graph.name = name
    opsets = sorted(((o.domain, o.version) for o in onx.opset_import))
    del onx.opset_import[:]
    for domain, version in opsets:
        o = onx.opset_import.add()
        o.domain, o.version = domain, version
    p = out / f"{name}.onnx"
    p.write_bytes(onx.SerializeToString())
    return p


def write_rows(out: Path, name: str, columns: dict) -> None:
    """columns: ordered {column name: 1-D numpy array (float32) or list[str]}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays, fields = [], []
    for col, values in columns.items():
        if isinstance(values, list):
            arrays.append(pa.array(values, type=pa.string()))
        else:
            arrays.append(pa.array(values))
        fields.append(pa.field(col, arrays[-1].type, nullable=False))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    pq.write_table(table, out / f"{name}.rows.parquet", compression="zstd")


def run_and_write_expected(out: Path, name: str, model_path: Path, feeds: dict) -> list[dict]:
    """Run onnxruntime on feeds, write NAME.expected.{parquet,json}; returns output descriptions."""
    import numpy as np
    import onnxruntime
    import pyarrow as pa
    import pyarrow.parquet as pq

    sess = ort_session(model_path.read_bytes())
    names = [o.name for o in sess.get_outputs()]
    results = sess.run(names, feeds)
    n = len(next(iter(feeds.values())))

    json_outputs, arrays, fields, descs = [], [], [], []
    for oname, res in zip(names, results):
        if isinstance(res, np.ndarray):
            if res.ndim == 0 or res.shape[0] != n:
                raise RuntimeError(f"{name}: output {oname} has shape {res.shape}, expected leading {n}")
            dtype = str(res.dtype) if res.dtype != object else "string"
            flat = res.reshape(-1)
            data = [str(v) for v in flat] if dtype == "string" else flat.tolist()
            json_outputs.append(
                {"name": oname, "kind": "tensor", "dtype": dtype, "shape": list(res.shape), "data": data}
            )
            if dtype == "string":
                base = pa.array(data, type=pa.string())
            else:
                base = pa.array(flat)
            if res.ndim == 1:
                arr = base
            else:
                width = int(np.prod(res.shape[1:]))
                arr = pa.FixedSizeListArray.from_arrays(base, width)
            meta = {"onnx_kind": "tensor", "onnx_shape": json.dumps(list(res.shape))}
            descs.append({"name": oname, "kind": "tensor", "dtype": dtype, "shape": list(res.shape)})
        elif isinstance(res, list):  # ZipMap: seq(map(key, float))
            keys = list(res[0].keys())
            for row in res:
                if list(row.keys()) != keys:
                    raise RuntimeError(f"{name}: ZipMap rows with different keys")
            key_dtype = "string" if isinstance(keys[0], str) else "int64"
            rows = [[float(np.float32(row[k])) for k in keys] for row in res]
            json_outputs.append(
                {
                    "name": oname,
                    "kind": "seq_map",
                    "key_dtype": key_dtype,
                    "value_dtype": "float32",
                    "keys": keys,
                    "data": rows,
                }
            )
            base = pa.array(np.asarray(rows, dtype=np.float32).reshape(-1))
            arr = pa.FixedSizeListArray.from_arrays(base, len(keys))
            meta = {"onnx_kind": "seq_map", "keys": json.dumps(keys), "key_dtype": key_dtype}
            descs.append(
                {"name": oname, "kind": "seq_map", "key_dtype": key_dtype, "value_dtype": "float32", "keys": keys}
            )
        else:
            raise RuntimeError(f"{name}: unexpected output type {type(res)} for {oname}")
        arrays.append(arr)
        fields.append(pa.field(oname, arr.type, nullable=False, metadata=meta))

    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    pq.write_table(table, out / f"{name}.expected.parquet", compression="zstd")
    doc = {
        "model": name,
        "rows": n,
        "onnxruntime_version": onnxruntime.__version__,
        "outputs": json_outputs,
    }
    (out / f"{name}.expected.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return descs


# --------------------------------------------------------------------------- models


def split(X, y, rows=N_ROWS):
    """Last `rows` samples are the held-out rows written to NAME.rows.parquet."""
    return X[:-rows], y[:-rows], X[-rows:]


def convert(model, initial_types, zipmap=True, black_op=None):
    from skl2onnx import convert_sklearn

    options = None
    if not zipmap:
        options = {id(model): {"zipmap": False}}
    return convert_sklearn(
        model,
        initial_types=initial_types,
        target_opset=TARGET_OPSET,
        options=options,
        black_op=black_op,
    )


def tabular_model(out: Path, name: str, est, X, y, *, zipmap=True, black_op=None, task, extra=None) -> dict:
    """A model with one 2-D float input X [N, F]; rows as columns f0..f{F-1}."""
    import numpy as np
    from skl2onnx.common.data_types import FloatTensorType

    X = X.astype(np.float32)
    X_train, y_train, X_rows = split(X, y)
    est.fit(X_train, y_train)
    nf = X.shape[1]
    onx = convert(est, [("X", FloatTensorType([None, nf]))], zipmap=zipmap, black_op=black_op)
    path = write_model(out, name, onx)
    feature_columns = [f"f{i}" for i in range(nf)]
    write_rows(out, name, {c: X_rows[:, i].copy() for i, c in enumerate(feature_columns)})
    outputs = run_and_write_expected(out, name, path, {"X": X_rows})
    entry = {
        "task": task,
        "estimator": type(est).__name__,
        "feature_columns": feature_columns,
        "columns": {"X": feature_columns},
        "zipmap": zipmap if task == "classification" else None,
        "outputs_expected": outputs,
    }
    if task == "classification":
        entry["classes"] = [int(c) for c in est.classes_]
    entry.update(extra or {})
    return entry


def gen_logreg(out, name, zipmap):
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(
        n_samples=1200, n_features=4, n_informative=3, n_redundant=0, n_classes=2, random_state=11
    )
    return tabular_model(
        out, name, LogisticRegression(max_iter=500, random_state=0), X, y, zipmap=zipmap, task="classification"
    )


def gen_logreg20(out, name):
    """LogisticRegression on 20 features, 3 classes (multinomial: SOFTMAX, then an L1 Normalizer)."""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(n_samples=10000, n_features=20, n_informative=10, n_classes=3, random_state=41)
    est = LogisticRegression(max_iter=1000, random_state=0)
    return tabular_model(out, name, est, X, y, zipmap=False, task="classification")


def gen_rf(out, name, zipmap, n_estimators=10, max_depth=6, n_samples=2000):
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(
        n_samples=n_samples,
        n_features=20,
        n_informative=10,
        n_redundant=4,
        n_classes=3,
        random_state=21,
    )
    est = RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, random_state=0, n_jobs=1)
    return tabular_model(out, name, est, X, y, zipmap=zipmap, task="classification")


def gen_gbr(out, name):
    from sklearn.datasets import make_regression
    from sklearn.ensemble import GradientBoostingRegressor

    X, y = make_regression(n_samples=1500, n_features=8, n_informative=6, noise=5.0, random_state=31)
    est = GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=0)
    return tabular_model(out, name, est, X, y, task="regression")


def gen_gbc(out, name, n_classes, zipmap, n_estimators=30, max_depth=3, n_samples=2000):
    """Gradient boosting: one class's signed weights with LOGISTIC when binary, a tree per
    class with SOFTMAX otherwise (the native tree engine's other half)."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier

    X, y = make_classification(
        n_samples=n_samples, n_features=20, n_informative=10, n_redundant=4, n_classes=n_classes, random_state=41
    )
    est = GradientBoostingClassifier(n_estimators=n_estimators, max_depth=max_depth, random_state=0)
    return tabular_model(out, name, est, X, y, zipmap=zipmap, task="classification")


def gen_mlp(out, name):
    from sklearn.datasets import make_classification
    from sklearn.neural_network import MLPClassifier

    X, y = make_classification(
        n_samples=1500, n_features=10, n_informative=6, n_classes=2, random_state=41
    )
    est = MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=400, random_state=0)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return tabular_model(out, name, est, X, y, task="classification")


def gen_linreg(out, name):
    from sklearn.datasets import make_regression
    from sklearn.linear_model import LinearRegression

    X, y = make_regression(n_samples=600, n_features=5, n_informative=5, noise=1.0, random_state=51)
    # black_op: plain MatMul + Add + Reshape instead of ai.onnx.ml LinearRegressor,
    # so that tract (pure Rust) can run it too.
    return tabular_model(
        out,
        name,
        LinearRegression(),
        X,
        y,
        black_op={"LinearRegressor"},
        task="regression",
        extra={"tract": True},
    )


# --------------------------------------------------------------------------- GBDT
# LightGBM and XGBoost models converted by onnxmltools, HistGradientBoosting by skl2onnx:
# TreeEnsembleClassifier / TreeEnsembleRegressor (ai.onnx.ml opset 1; none of the three
# converters writes opset 5's TreeEnsemble or the *_as_tensor attributes, which
# scorer/tests/trees.rs builds itself), LightGBM's classifiers with an Identity, a Cast of
# the label and a Mul of the probabilities by one around the ensemble.

GBDT_FEATURES = 8
# onnxmltools 1.16 converts up to ai.onnx opset 15 (and picks ai.onnx.ml's itself).
ONNXMLTOOLS_OPSET = 15


def gbdt_data(task, n_classes=2, n_samples=2000, n_features=GBDT_FEATURES, seed=71):
    """Features with about 8% missing values (NaN), in training and in the reference rows."""
    import numpy as np
    from sklearn.datasets import make_classification, make_regression

    if task == "classification":
        X, y = make_classification(
            n_samples=n_samples,
            n_features=n_features,
            n_informative=min(6, n_features),
            n_redundant=0,
            n_classes=n_classes,
            random_state=seed,
        )
    else:
        X, y = make_regression(n_samples=n_samples, n_features=n_features, n_informative=6, noise=5.0, random_state=seed)
    X = X.astype(np.float32)
    X[np.random.default_rng(seed).random(X.shape) < 0.08] = np.nan
    return X, y


def gbdt_model(out, name, est, X, y, *, task, converter, zipmap=True) -> dict:
    """Like tabular_model, for the GBDT libraries: fit, convert with `converter`, write."""
    import numpy as np

    X_train, y_train, X_rows = split(X, y)
    est.fit(X_train, y_train)
    nf = X.shape[1]
    if converter == "skl2onnx":
        from skl2onnx.common.data_types import FloatTensorType

        with skl2onnx_bool_lists():
            onx = convert(est, [("X", FloatTensorType([None, nf]))], zipmap=zipmap or task != "classification")
    else:
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType

        convert_fn = onnxmltools.convert_lightgbm if converter == "onnxmltools-lightgbm" else onnxmltools.convert_xgboost
        kwargs = {"zipmap": zipmap} if task == "classification" and converter == "onnxmltools-lightgbm" else {}
        onx = convert_fn(
            est, initial_types=[("X", FloatTensorType([None, nf]))], target_opset=ONNXMLTOOLS_OPSET, **kwargs
        )
    if not any(n.op_type.startswith("TreeEnsemble") for n in onx.graph.node):
        raise RuntimeError(f"{name}: {converter} wrote no tree ensemble")
    path = write_model(out, name, onx)
    feature_columns = [f"f{i}" for i in range(nf)]
    write_rows(out, name, {c: X_rows[:, i].copy() for i, c in enumerate(feature_columns)})
    if not np.isnan(X_rows).any():
        raise RuntimeError(f"{name}: no missing value in the reference rows")
    outputs = run_and_write_expected(out, name, path, {"X": X_rows})
    entry = {
        "task": task,
        "estimator": type(est).__name__,
        "converter": converter.split("-")[0],
        "ops": sorted({n.op_type for n in onx.graph.node}),
        "feature_columns": feature_columns,
        "columns": {"X": feature_columns},
        "zipmap": zipmap if task == "classification" else None,
        "missing_values": True,
        "outputs_expected": outputs,
    }
    if task == "classification":
        entry["classes"] = [int(c) for c in est.classes_]
    return entry


class skl2onnx_bool_lists:
    """skl2onnx 1.20 passes HistGradientBoosting's missing-value flags as Python bools,
    which onnx 1.19's make_attribute refuses in an int list: convert them to ints (the
    values are the same) while converting."""

    def __enter__(self):
        import skl2onnx.common._container as container

        self.container, self.make_node = container, container.make_node

        def make_node(*args, **kwargs):
            for k, v in kwargs.items():
                if isinstance(v, list) and any(isinstance(x, bool) for x in v):
                    kwargs[k] = [int(x) for x in v]
            return self.make_node(*args, **kwargs)

        container.make_node = make_node

    def __exit__(self, *exc):
        self.container.make_node = self.make_node


def gen_lgbm(out, name, n_classes=None, zipmap=True, n_estimators=30, num_leaves=15, n_samples=2000, n_features=GBDT_FEATURES):
    import lightgbm

    common = dict(n_estimators=n_estimators, num_leaves=num_leaves, random_state=0, n_jobs=1, deterministic=True, verbose=-1)
    if n_classes is None:
        X, y = gbdt_data("regression", n_samples=n_samples, n_features=n_features)
        est, task = lightgbm.LGBMRegressor(**common), "regression"
    else:
        X, y = gbdt_data("classification", n_classes, n_samples=n_samples, n_features=n_features)
        est, task = lightgbm.LGBMClassifier(**common), "classification"
    return gbdt_model(out, name, est, X, y, task=task, converter="onnxmltools-lightgbm", zipmap=zipmap)


def gen_xgb(out, name, n_classes=None):
    import xgboost

    common = dict(n_estimators=20, max_depth=4, random_state=0, n_jobs=1, tree_method="hist")
    if n_classes is None:
        X, y = gbdt_data("regression")
        est, task = xgboost.XGBRegressor(**common), "regression"
    else:
        X, y = gbdt_data("classification", n_classes)
        est, task = xgboost.XGBClassifier(**common), "classification"
    return gbdt_model(out, name, est, X, y, task=task, converter="onnxmltools-xgboost")


def gen_hgb(out, name, n_classes=None):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    common = dict(max_iter=20, max_leaf_nodes=15, random_state=0)
    if n_classes is None:
        X, y = gbdt_data("regression")
        est, task = HistGradientBoostingRegressor(**common), "regression"
    else:
        X, y = gbdt_data("classification", n_classes)
        est, task = HistGradientBoostingClassifier(**common), "classification"
    return gbdt_model(out, name, est, X, y, task=task, converter="skl2onnx", zipmap=False)


PIPELINE_FLOATS = ["age", "income", "tenure"]
PIPELINE_CITIES = ["amsterdam", "berlin", "lisbon", "oslo", "paris", "rome"]
PIPELINE_UNKNOWN_CITY = "zurich"


def gen_pipeline(out, name):
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    rng = np.random.default_rng(61)
    n = 1500
    age = rng.uniform(18, 80, n).astype(np.float32)
    income = rng.lognormal(10.5, 0.5, n).astype(np.float32)
    tenure = rng.exponential(4.0, n).astype(np.float32)
    city_idx = rng.integers(0, len(PIPELINE_CITIES), n)
    city = np.array([PIPELINE_CITIES[i] for i in city_idx], dtype=object)
    city_effect = np.linspace(-1.0, 1.0, len(PIPELINE_CITIES))[city_idx]
    logit = 0.04 * (age - 45) + 0.8 * (np.log(income) - 10.5) - 0.15 * (tenure - 4) + city_effect
    y = (rng.uniform(0, 1, n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    # Some held-out rows carry a city never seen in training (one-hot: all zeros).
    city_rows = city[-N_ROWS:].copy()
    city_rows[::17] = PIPELINE_UNKNOWN_CITY
    city[-N_ROWS:] = city_rows

    # Integer column indices (no pandas needed); skl2onnx maps them onto the 4 [N,1] inputs in order.
    X = np.empty((n, 4), dtype=object)
    X[:, 0], X[:, 1], X[:, 2], X[:, 3] = age, income, tenure, city
    X_train, y_train = X[:-N_ROWS], y[:-N_ROWS]
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), [0, 1, 2]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), [3]),
        ]
    )
    est = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=500, random_state=0))])
    est.fit(X_train, y_train)

    initial_types = [(c, FloatTensorType([None, 1])) for c in PIPELINE_FLOATS]
    initial_types.append(("city", StringTensorType([None, 1])))
    onx = convert(est, initial_types)
    path = write_model(out, name, onx)

    rows = {
        "age": age[-N_ROWS:].copy(),
        "income": income[-N_ROWS:].copy(),
        "tenure": tenure[-N_ROWS:].copy(),
        "city": [str(c) for c in city_rows],
    }
    write_rows(out, name, rows)
    feeds = {c: rows[c].reshape(-1, 1) for c in PIPELINE_FLOATS}
    feeds["city"] = np.array(rows["city"], dtype=object).reshape(-1, 1)
    outputs = run_and_write_expected(out, name, path, feeds)
    return {
        "task": "classification",
        "estimator": "Pipeline(ColumnTransformer(StandardScaler, OneHotEncoder), LogisticRegression)",
        "feature_columns": None,
        "columns": {c: [c] for c in PIPELINE_FLOATS + ["city"]},
        "zipmap": True,
        "classes": [int(c) for c in est.classes_],
        "unknown_city": PIPELINE_UNKNOWN_CITY,
        "outputs_expected": outputs,
    }


def gen_big_rf(out, name):
    return gen_rf(out, name, zipmap=False, n_estimators=100, max_depth=12, n_samples=10000)


def gen_gb300(out, name):
    return gen_gbc(out, name, 2, zipmap=False, n_estimators=300, max_depth=6, n_samples=10000)


GENERATORS = {
    "logreg": lambda out, n: gen_logreg(out, n, zipmap=True),
    "logreg_nozipmap": lambda out, n: gen_logreg(out, n, zipmap=False),
    "rf": lambda out, n: gen_rf(out, n, zipmap=True),
    "rf_nozipmap": lambda out, n: gen_rf(out, n, zipmap=False),
    "gbr": gen_gbr,
    "gbc": lambda out, n: gen_gbc(out, n, 2, zipmap=True),
    "gbc3": lambda out, n: gen_gbc(out, n, 3, zipmap=False),
    "mlp": gen_mlp,
    "pipeline": gen_pipeline,
    "linreg": gen_linreg,
    "big_rf": gen_big_rf,
    "gb300": gen_gb300,
    "logreg20": gen_logreg20,
    "lgbm_binary": lambda out, n: gen_lgbm(out, n, 2),
    # 3 × 20 trees: under the 80 above which ONNX Runtime may sum trees in per-thread
    # partials (flight.rs runs the classifiers on two intra-op threads)
    "lgbm_multi": lambda out, n: gen_lgbm(out, n, 3, zipmap=False, n_estimators=20),
    "lgbm_reg": gen_lgbm,
    "xgb_binary": lambda out, n: gen_xgb(out, n, 2),
    "xgb_multi": lambda out, n: gen_xgb(out, n, 3),
    "xgb_reg": gen_xgb,
    "hgb_binary": lambda out, n: gen_hgb(out, n, 2),
    "hgb_reg": gen_hgb,
    # LightGBM binary, 300 trees of 31 leaves on the benchmark's 20 features
    "lgbm300": lambda out, n: gen_lgbm(
        out, n, 2, zipmap=False, n_estimators=300, num_leaves=31, n_samples=10000, n_features=20
    ),
}


# --------------------------------------------------------------------------- bad artifacts


def tiny_graph_with_initializer(init):
    """Y = X + W, X/Y float [N, dims...]; W given."""
    from onnx import TensorProto, helper

    dims = list(init.dims)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N"] + dims[1:])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N"] + dims[1:])
    node = helper.make_node("Add", ["X", init.name], ["Y"], name="add")
    graph = helper.make_graph([node], "tiny", [x], [y], initializer=[init])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="lakescore-tests",
        producer_version="1",
    )
    model.ir_version = 8
    return model


def must_not_load(name: str, data: bytes) -> None:
    """Sanity check: onnxruntime refuses the artifact when given as bytes."""
    try:
        ort_session(data, quiet=True)
    except Exception:
        return
    raise RuntimeError(f"{name}: onnxruntime accepted a 'bad' artifact")


def gen_bad(out: Path) -> dict:
    import numpy as np
    import onnx
    from onnx import TensorProto, external_data_helper, helper

    entries = {}

    # 1. random bytes
    data = np.random.default_rng(71).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (out / "bad_not_onnx.bin").write_bytes(data)
    must_not_load("bad_not_onnx.bin", data)
    entries["bad_not_onnx.bin"] = {"why": "4096 random bytes, not a protobuf ModelProto"}

    # 2. truncated
    full = (out / "logreg.onnx").read_bytes()
    data = full[: len(full) // 2]
    (out / "bad_truncated.onnx").write_bytes(data)
    must_not_load("bad_truncated.onnx", data)
    try:
        onnx.load_model_from_string(data)
        parses = True
    except Exception:
        parses = False
    entries["bad_truncated.onnx"] = {
        "why": "first half of logreg.onnx",
        "protobuf_parses": parses,
    }

    # 3. no graph
    m = onnx.ModelProto()
    m.ir_version = 8
    m.producer_name = "lakescore-tests"
    m.opset_import.extend([helper.make_opsetid("", 17)])
    data = m.SerializeToString()
    (out / "bad_no_graph.onnx").write_bytes(data)
    must_not_load("bad_no_graph.onnx", data)
    entries["bad_no_graph.onnx"] = {"why": "ModelProto with ir_version 8 and opset 17 but no graph"}

    # 4./5. external data pointing outside the artifact.  Written with SerializeToString,
    # never onnx.save (which would try to write the external file).
    for fname, location in (
        ("bad_external_abs.onnx", "/etc/passwd"),
        ("bad_external_dotdot.onnx", "../../secret.bin"),
    ):
        w = helper.make_tensor("W", TensorProto.FLOAT, [1, 4], np.zeros(4, np.float32).tobytes(), raw=True)
        external_data_helper.set_external_data(w, location=location, offset=0, length=16)
        w.data_location = TensorProto.EXTERNAL
        w.ClearField("raw_data")
        model = tiny_graph_with_initializer(w)
        data = model.SerializeToString()
        (out / fname).write_bytes(data)
        entries[fname] = {
            "why": f"valid tiny model (Y = X + W) whose initializer W is external data at {location!r}",
            "external_location": location,
        }

    # 6. raw_data length disagrees with dims: dims [1, 4] float = 16 bytes, raw_data has 12.
    w = helper.make_tensor("W", TensorProto.FLOAT, [1, 4], np.zeros(4, np.float32).tobytes(), raw=True)
    w.raw_data = np.zeros(3, np.float32).tobytes()
    model = tiny_graph_with_initializer(w)
    data = model.SerializeToString()
    (out / "bad_raw_len.onnx").write_bytes(data)
    must_not_load("bad_raw_len.onnx", data)
    entries["bad_raw_len.onnx"] = {
        "why": "initializer W with dims [1,4] float (16 bytes) but 12 bytes of raw_data",
    }

    # 7. external data in a file beside the model that is a symlink out of the directory:
    # the classic way past a check that only looks at the path.
    link = out / "bad_external_weights.bin"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to("/etc/hostname")
    w = helper.make_tensor("W", TensorProto.FLOAT, [1, 4], np.zeros(4, np.float32).tobytes(), raw=True)
    external_data_helper.set_external_data(w, location=link.name, offset=0, length=16)
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    data = tiny_graph_with_initializer(w).SerializeToString()
    (out / "bad_external_symlink.onnx").write_bytes(data)
    entries["bad_external_symlink.onnx"] = {
        "why": f"Y = X + W, W external data at {link.name!r}, a symlink beside the model to /etc/hostname",
        "external_location": link.name,
    }

    # 8. a node reading a value that nothing produces
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node("Add", ["X", "Z"], ["Y"], name="add_undefined")
    model = helper.make_model(
        helper.make_graph([node], "tiny", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="lakescore-tests",
    )
    model.ir_version = 8
    data = model.SerializeToString()
    (out / "bad_missing_input.onnx").write_bytes(data)
    must_not_load("bad_missing_input.onnx", data)
    entries["bad_missing_input.onnx"] = {"why": "node 'add_undefined' reads 'Z', which no input, initializer or node makes"}

    # 9. an op from a custom domain (a runtime would need a custom-op library for it):
    # refused unless the registry's allowed_op_domains lists the domain.
    node = helper.make_node("Scramble", ["X"], ["Y"], name="scramble", domain="com.example.custom")
    model = helper.make_model(
        helper.make_graph([node], "tiny", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.custom", 1)],
        producer_name="lakescore-tests",
    )
    model.ir_version = 8
    data = model.SerializeToString()
    (out / "bad_custom_domain.onnx").write_bytes(data)
    must_not_load("bad_custom_domain.onnx", data)
    entries["bad_custom_domain.onnx"] = {
        "why": "node 'scramble' is op Scramble of domain com.example.custom",
        "domain": "com.example.custom",
    }

    # 10. a few hundred bytes whose one constant-shaped tensor needs 16 GiB: refused at
    # registration (its size is known from the graph alone).
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1 << 20, 1 << 12])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], name="fill_16gib",
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceSum", ["big"], ["total"], name="sum", keepdims=0),
        helper.make_node("Add", ["X", "total"], ["Y"], name="add"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "tiny", [x], [y], initializer=[shape]),
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="lakescore-tests",
    )
    model.ir_version = 8
    data = model.SerializeToString()
    (out / "bad_constant_oom.onnx").write_bytes(data)
    entries["bad_constant_oom.onnx"] = {"why": "ConstantOfShape 'fill_16gib' makes a [1048576, 4096] float tensor (16 GiB)"}

    for fname, e in entries.items():
        p = out / fname
        e.update({"file": fname, "size": p.stat().st_size, "sha256": sha256_file(p), "expect_http_status": 422})

    # 11. valid, but its memory depends on the data: Y = X + sum(ones([max(X), 1000])), so a
    # row holding 1e6 makes a run allocate 4 GB. Nothing static can see it; the worker's
    # max_inference_bytes must stop it.
    x1 = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 1])
    y1 = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1])
    width = helper.make_tensor("width", TensorProto.INT64, [1], [1000])
    nodes = [
        helper.make_node("ReduceMax", ["X"], ["max"], name="max", keepdims=0),
        helper.make_node("Cast", ["max"], ["rows"], name="rows", to=TensorProto.INT64),
        helper.make_node("Reshape", ["rows", "one"], ["rows1"], name="rows1"),
        helper.make_node("Concat", ["rows1", "width"], ["shape"], name="shape", axis=0),
        helper.make_node("ConstantOfShape", ["shape"], ["big"], name="fill",
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceSum", ["big"], ["total"], name="sum", keepdims=0),
        helper.make_node("Add", ["X", "total"], ["Y"], name="add"),
    ]
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    model = helper.make_model(
        helper.make_graph(nodes, "hog", [x1], [y1], initializer=[width, one]),
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="lakescore-tests",
    )
    model.ir_version = 8
    data = model.SerializeToString()
    (out / "hog_runtime.onnx").write_bytes(data)
    got = ort_session(data).run(None, {"X": np.array([[1.0], [3.0]], np.float32)})[0]
    assert np.array_equal(got, np.array([[3001.0], [3003.0]], np.float32)), got
    entries["hog_runtime.onnx"] = {
        "why": "Y = X + sum(ones([max(X), 1000])): 4000 * max(X) bytes at run time",
        "file": "hog_runtime.onnx",
        "size": len(data),
        "sha256": sha256_file(out / "hog_runtime.onnx"),
        "expect_http_status": 201,
    }
    return entries


# --------------------------------------------------------------------------- main


def generate_group(out: Path, group: str) -> dict:
    import numpy as np

    np.random.seed(0)  # belt and braces; every estimator also has its own random_state
    models = CORE_MODELS if group == "core" else BENCH_MODELS
    result = {"models": {}, "bad": {}}
    for name in models:
        entry = GENERATORS[name](out, name)
        p = out / f"{name}.onnx"
        entry = {
            "onnx": p.name,
            "rows": f"{name}.rows.parquet",
            "expected_parquet": f"{name}.expected.parquet",
            "expected_json": f"{name}.expected.json",
            "n_rows": N_ROWS,
            "size": p.stat().st_size,
            "sha256": sha256_file(p),
            "tract": entry.pop("tract", False),
            "bench_only": group == "bench",
            **entry,
            "signature": signature(p),
        }
        result["models"][name] = entry
        print(f"  {name:18s} {entry['size']:>9d} bytes", file=sys.stderr)
    if group == "core":
        result["bad"] = gen_bad(out)
        for fname, e in result["bad"].items():
            print(f"  {fname:26s} {e['size']:>9d} bytes", file=sys.stderr)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    ap.add_argument(
        "--bench", action="store_true", help="also generate the benchmark models (big_rf, gb300, logreg20, lgbm300)"
    )
    ap.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = ap.parse_args(argv)

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    key = source_key()
    wanted = ["core"] + (["bench"] if args.bench else [])

    ok, todo = up_to_date(out, key, wanted)
    if ok and not args.force:
        print(f"test models up to date in {out}", file=sys.stderr)
        return 0
    if args.force:
        todo = wanted

    stamp = read_stamp(out)
    if stamp.get("key") != key or args.force:
        # Sources changed: everything previously generated is stale.
        for child in out.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        stamp = {}
        manifest = None
    else:
        try:
            manifest = json.loads((out / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest, todo, stamp = None, wanted, {}
    if manifest is None:
        import lightgbm, numpy, onnx, onnxmltools, onnxruntime, pyarrow, skl2onnx, sklearn, xgboost  # noqa: E401

        manifest = {
            "format": 1,
            "n_rows": N_ROWS,
            "target_opset": {(k or "ai.onnx"): v for k, v in TARGET_OPSET.items()},
            "versions": {
                "numpy": numpy.__version__,
                "scikit-learn": sklearn.__version__,
                "skl2onnx": skl2onnx.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "pyarrow": pyarrow.__version__,
                "lightgbm": lightgbm.__version__,
                "xgboost": xgboost.__version__,
                "onnxmltools": onnxmltools.__version__,
            },
            "models": {},
            "bad": {},
        }
    # core first: the bad artifacts derive from logreg.onnx
    groups_done = [g for g in (stamp.get("groups") or []) if g not in todo]
    print(f"generating test models ({', '.join(todo)}) in {out}", file=sys.stderr)
    for group in [g for g in ("core", "bench") if g in todo]:
        res = generate_group(out, group)
        manifest["models"].update(res["models"])
        manifest["bad"].update(res["bad"])
        groups_done.append(group)
    manifest["models"] = dict(sorted(manifest["models"].items()))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    (out / STAMP).write_text(json.dumps({"key": key, "groups": sorted(set(groups_done))}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
