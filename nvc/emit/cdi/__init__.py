"""CDI (Container Device Interface): specs that tell podman, containerd, CRI-O and docker what a GPU device is.

``names`` holds the qualified-name grammar (``vendor/class=name``) and annotation-key rules every other CDI module
(generator, spec reader, runtime shim, doctor) validates against. The package's ``__init__`` imports nothing, so a
hot path that needs only the names pays for nothing else.
"""
