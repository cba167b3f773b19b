"""`mlx-sd serve`: a local HTTP API compatible with AUTOMATIC1111's web UI (`/sdapi/v1/...`) and the
OpenAI images API (`/v1/images/generations`), a thin layer over the engine's request/result API.

- `schema`: the lenient pydantic models of the requests (unknown keys ignored);
- `images`: base64 images in and out, bounded before decoding;
- `translate`: A1111 payloads -> `GenerationRequest`, results -> A1111's `info`;
- `library`: models, LoRAs, VAEs... by name, never a path outside the library;
- `jobs`: the single FIFO generation queue with its bound, progress, interrupt and skip, over a
  `GenerationExecutor` (the loaded model) that the app's worker can also implement;
- `app`: the FastAPI application (routes, HTTP Basic auth, body-size limit, CORS).

Nothing here imports Qt.
"""
