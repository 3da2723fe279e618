"""Facts with exactly one home. CMakeLists.txt reads FILTER_ID from this file for the C shim."""

#: HDF5 filter id. Provisional: it lies in HDF5's range for unregistered/testing filters (256-511)
#: and will change to an id assigned by The HDF Group once registered (see docs/FORMAT.md).
FILTER_ID = 311

#: Name used by h5py/hdmf's ``compression="necoda"`` and numcodecs' codec id.
FILTER_NAME = "necoda"

#: Version of the chunk container (docs/FORMAT.md): the newest this package reads and writes. Decoders
#: refuse versions they do not know. A chunk is written with the lowest version that describes it, so
#: every chunk an older reader can decode correctly stays readable by it.
FORMAT_VERSION = 2
#: The container version that introduced the ``_order`` parameter (an F-ordered chunk, docs/FORMAT.md).
ORDER_PARAM_SINCE = 2

#: Version of the cd_values layout written by ``Necoda`` filter objects and the shim's set_local.
CD_LAYOUT_VERSION = 1

#: Number of leading cd_values slots set by the user-facing filter object (layout version, mode, options);
#: the shim's set_local appends the dtype and chunk shape after them (docs/FORMAT.md).
CD_USER_SLOTS = 8
