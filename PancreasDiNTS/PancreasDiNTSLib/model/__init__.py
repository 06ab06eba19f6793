"""Model folders read as data, the DiNTS network, export, exported models, download, random bundles."""
