"""Reads a committed Fruits! output with pyarrow, pandas, polars and DuckDB.

Only the files `_SUCCESS` lists are read (a folder may hold files of a job
that did not commit). Prints, per tool, the row count, the width of each
vector column and, per row, the path and the sum of each vector, as JSON:
the Rust test compares them with what it reads itself.

Usage: python3 read.py OUTPUT_DIR
"""

import json
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq

out = Path(sys.argv[1])
success = json.loads((out / "_SUCCESS").read_text())
files = [f.removeprefix("file://") for f in success["files"]["features"]]
vectors = [c for c in ("features", "pca") if c in pq.read_schema(files[0]).names]


def summary(paths, columns):
    """Rows as {path: [sum of each vector]}, and each vector column's width."""
    width = {name: int(m.shape[1]) for name, m in columns.items()}
    sums = {p: [float(columns[n][i].sum(dtype=np.float64)) for n in vectors] for i, p in enumerate(paths)}
    return {"rows": len(paths), "width": width, "sums": sums}


def with_pyarrow():
    t = pq.read_table(files)
    cols = {n: t[n].combine_chunks().flatten().to_numpy().reshape(len(t), -1) for n in vectors}
    return summary(t["path"].to_pylist(), cols)


def with_pandas():
    df = pd.read_parquet(files)
    cols = {n: np.stack(df[n].to_numpy()) for n in vectors}
    return summary(df["path"].tolist(), cols)


def with_polars():
    df = pl.read_parquet(files)
    cols = {n: np.asarray(df[n].to_list(), dtype=np.float32) if df[n].dtype == pl.List else df[n].to_numpy() for n in vectors}
    return summary(df["path"].to_list(), cols)


def with_duckdb():
    rel = duckdb.sql(f"SELECT path, {', '.join(vectors)} FROM read_parquet({files!r})")
    df = rel.df()
    cols = {n: np.stack(df[n].to_numpy()) for n in vectors}
    return summary(df["path"].tolist(), cols)


print(json.dumps({"pyarrow": with_pyarrow(), "pandas": with_pandas(), "polars": with_polars(), "duckdb": with_duckdb()}))
