"""``Necoda``: the h5py filter object, in hdf5plugin's style (a Mapping usable as ``**Necoda(...)``)."""
from __future__ import annotations

from h5py._hl.filters import FilterRefBase

from . import options
from .constants import FILTER_ID


class Necoda(FilterRefBase):
    """h5py compression filter for necoda.

    >>> f.create_dataset("movie", data=movie, chunks=(64, 512, 512), compression=Necoda(mode="lossless"))
    >>> H5DataIO(data, **Necoda(mode="bounded", max_error_noise=0.5), allow_plugin_filters=True)

    :param mode: "auto" (default: chosen per dataset), "lossless", "bounded", "learned" or "raw".
    :param max_error: bounded/learned: every sample within this many raw units of the original.
    :param max_error_noise: bounded/learned: bound in units of the estimated noise σ (imaging). bounded: σ at
        each sample's brightness (a photon-transfer fit per chunk, so brighter samples get a larger bound in
        raw units); learned: the chunk's noise σ (robust, from frame differences).
    :param quality: learned: rate/quality level, 1 (smallest files) .. the model's n_quality (imaging-v2.1: 1..9,
        default 6, ~1000x on a two-photon movie; docs/LEARNED.md).
    :param level: lossless: entropy-coder effort.
    :param model: learned/auto: the learned model, as a built-in name (``"imaging-v2.1"``), a content id
        (``"necoda-<16 hex>"``, installed here or on ``NECODA_MODEL_PATH``) or a package folder (the output
        of ``necoda train``). Resolved now (``LookupError`` naming it when not found); the dataset's
        cd_values store its id, so later writes use the same model. Readers need the package: built in, or
        its folder on ``NECODA_MODEL_PATH`` (docs/LEARNED.md). Default: the built-in ``imaging-v2.1``.
    """

    filter_name = "necoda"
    filter_id = FILTER_ID

    def __init__(self, mode: str = "auto", max_error=None, max_error_noise=None, quality=None, level=None,
                 model=None):
        self.mode = mode
        self.options = options.check_options(
            mode, dict(max_error=max_error, max_error_noise=max_error_noise, quality=quality, level=level,
                       model=model))
        self.filter_options = options.to_cd_values(mode, **self.options)

    def __repr__(self):
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Necoda(mode={self.mode!r}{opts})"


def require_necoda(dset) -> None:
    """Raise :class:`necoda_filter.FilterUnavailable` unless ``dset``'s filter pipeline holds necoda.

    Our writing APIs call this after creating a dataset, so data are never stored uncompressed
    because the filter was missing or not applied."""
    from ._plugin import FilterUnavailable

    plist = dset.id.get_create_plist()
    if not any(plist.get_filter(i)[0] == FILTER_ID for i in range(plist.get_nfilters())):
        raise FilterUnavailable(f"dataset {dset.name} was written without the necoda filter in its pipeline")
