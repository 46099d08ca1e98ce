"""sqz: SqueezeNet + Deep Compression, trained and swept with Ray, chained with Prefect.

The core (config, models, data, engine, compress, storage, metrics, report) is plain
Python + torch + pyarrow and never imports Ray or Prefect; ``sqz.distributed`` is the
Ray layer and ``flows/`` the Prefect layer.
"""

__version__ = "0.1.0"
