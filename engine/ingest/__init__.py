"""Ingest with inference: from stored messages to facts that stay true.

``pipeline`` runs extraction and decides, in code, what each new fact changes;
``maintain`` applies those decisions through the write path; ``worker`` runs the
pipeline in the background so a chat loop never waits on the LM.
"""
