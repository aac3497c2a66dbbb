"""Data in: fetching labelled patches from any source, decoding, manifests, signatures, split."""
