"""Facts with exactly one home. CMakeLists.txt reads FILTER_ID from this file for the C shim."""

#: HDF5 filter id. Provisional: it lies in HDF5's range for unregistered/testing filters (256-511)
#: and will change to an id assigned by The HDF Group once registered (see docs/FORMAT.md).
FILTER_ID = 311

#: Name used by h5py/hdmf's ``compression="necoda"`` and numcodecs' codec id.
FILTER_NAME = "necoda"

#: Version of the chunk container (docs/FORMAT.md). Decoders refuse versions they do not know.
FORMAT_VERSION = 1

#: Version of the cd_values layout written by ``Necoda`` filter objects and the shim's set_local.
CD_LAYOUT_VERSION = 1

#: Number of leading cd_values slots set by the user-facing filter object (layout version, mode, options);
#: the shim's set_local appends the dtype and chunk shape after them (docs/FORMAT.md).
CD_USER_SLOTS = 8
