"""Retrieval: finding a user's facts for a query.

``search`` runs the hybrid query; ``index`` holds the hnswlib vectors, ``lexical``
the BM25 index, ``fusion`` combines their signals, ``filters`` compiles metadata
filters to SQL.
"""
