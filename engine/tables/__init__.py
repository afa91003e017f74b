"""Inference (payload) tables, the usage system tables and SQL over them (`engine sql`).

Not re-exported here: the data plane imports `engine.tables._rows` alone, so answering a
query never imports pyarrow or deltalake; the writer and `engine sql` import them.
"""
