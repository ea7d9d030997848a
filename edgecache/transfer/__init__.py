"""Images on a disk: `edgecache preload` (tarballs into the store) and `edgecache export`.

Inputs: `docker save` archives (manifest.json), OCI image layouts (a directory or a tar of one,
index.json), each plain, gzip or zstd compressed (told apart by magic bytes). Outputs: an
OCI-layout tar, or with `--format docker` a tar that is at once an OCI layout and a docker-save
archive (the layout Docker 25+ writes), so that `edgecache preload` restores the original
manifest digests while `docker load` and `skopeo docker-archive:` read manifest.json.

Decisions (see the modules for the why):
- Names: an image name found in an archive is a Docker reference and is normalised as Docker
  does (`nginx:1.27` -> `docker.io/library/nginx:1.27`); the store repository is the full name,
  the same repository the pull-through cache fills for that upstream (names.py).
- docker-save layers stay as they are in the archive, uncompressed, with the schema2 media type
  `application/vnd.docker.image.rootfs.diff.tar` (docker_save.py).
- Nothing is published until the whole input is verified; verified blobs wait in
  `<data>/tmp/preload-*` files, which a restarted preload reuses (spool.py).
- Referrers (signatures, SBOMs, scan reports) travel in the OCI format only: index.json lists
  them without a name, as oras does; preload stores them untagged beside their subject
  (export.py, oci_layout.py, importer.py).
"""
