"""Service glue shared by the API and the worker: settings, SQL models, data access, blob storage."""
