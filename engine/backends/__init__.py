"""Model back-ends: the local models and how they run.

``models`` is the manifest and the checksummed local cache; ``embed`` and
``onnx_encoder`` turn texts into vectors; ``lm`` is llama.cpp as DSPy's language
model, with ``llamagen`` for grammar-constrained generation and prefix KV states.
"""
