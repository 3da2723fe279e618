"""Facts with exactly one home. CMakeLists.txt reads FILTER_ID and the cd_values layout constants from this file for
the C shim."""

#: HDF5 filter id. Provisional: it lies in HDF5's range for unregistered/testing filters (256-511)
#: and will change to an id assigned by The HDF Group once registered (see docs/FORMAT.md).
FILTER_ID = 311

#: Name used by h5py/hdmf's ``compression="necoda"`` and numcodecs' codec id.
FILTER_NAME = "necoda"

#: Version of the chunk container (docs/FORMAT.md): the newest this package reads and writes. Decoders
#: refuse versions they do not know. A chunk is written with the lowest version that describes it, so
#: every chunk an older reader can decode correctly stays readable by it.
FORMAT_VERSION = 3
#: The container version that introduced the ``_order`` parameter (an F-ordered chunk, docs/FORMAT.md).
ORDER_PARAM_SINCE = 2
#: The container version that introduced the ``_pad`` parameter (padding around the core that is not zero:
#: an edge chunk of a dataset whose fill value is not 0, docs/FORMAT.md).
PAD_PARAM_SINCE = 3

#: Newest version of the cd_values layout (docs/FORMAT.md): 2 adds the model id. As for chunks, cd_values
#: are written with the lowest layout that describes them: 1 (no model slots) unless a model is named, so
#: files that use the default model stay readable by releases that know only layout 1. Readers parse
#: cd_values by the version in slot 0.
CD_LAYOUT_VERSION = 2

#: Number of leading cd_values slots of layout CD_LAYOUT_VERSION set by the user-facing filter object
#: (layout version, mode, options, model id); the shim's set_local appends the dtype and chunk shape after
#: them (docs/FORMAT.md).
CD_USER_SLOTS = 10

#: User slots of layout version 1 (no model id: the default model): set_local's slots start here.
CD_USER_SLOTS_V1 = 8

#: First of the two user slots holding the model id's 64 bits (its 16 hex digits; low word first),
#: 0, 0 = the default model (layout 2).
CD_MODEL_SLOT = 8
