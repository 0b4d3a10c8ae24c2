"""Bulk embeddings from a bundle: images in, one Parquet row per image out, on one process or Ray.

The per-image work is the service's own (`striate.preprocess` to decode and preprocess, the bundle's
onnxruntime graph to run), so a row here equals what `POST /v1/models/{m}/features` answers for the
same file. `inputs` lists the images, `embedder` turns a table of paths into a table of vectors,
`output` owns the Parquet dataset (and resuming it), `engines` runs the embedder locally or as a Ray
Data actor pool. Needs the `scale` extra (pyarrow, tqdm; ray for `--engine ray`); never torch.
"""
