"""p2pdist: peer-to-peer distribution of container image layers and large blobs."""

__version__ = "0.1.0"
