"""DICOM in: the real CT and MR images that ship in pydicom's wheel, and a multi-slice series written here from a
NIfTI volume (shuffled file names, instance numbers against the slice order, a rescale to undo)."""

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from motfm_core.config import DataConfig
from motfm_core.data.ingest import load_source
from motfm_core.data.readers import read_dicom, read_folder, read_nifti


def _slice(path, pixels, z, series, instance, slope=2.0, intercept=-100.0, spacing=(0.5, 0.7), modality="MR"):
    """One single-frame slice (MR, or CT) whose stored values rescale (slope, intercept) to `pixels`."""
    sop = CTImageStorage if modality == "CT" else MRImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.Modality = sop, generate_uid(), series, modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = list(spacing)
    ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [10.0, -5.0, z]
    ds.InstanceNumber, ds.RescaleSlope, ds.RescaleIntercept = instance, slope, intercept
    ds.PixelData = np.rint((pixels - intercept) / slope).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_real_ct_and_mr_files_are_read_in_modality_units_with_their_spacing(tmp_path):
    rows = ["filename,label,subject"]
    for i in range(6):
        for kind in ("CT", "MR"):
            shutil.copy(get_testdata_file(f"{kind}_small.dcm"), tmp_path / f"{kind.lower()}{i}.dcm")
            rows.append(f"{kind.lower()}{i}.dcm,{kind},s{i}{kind}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    raw = read_folder(tmp_path)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert raw.class_names == ["CT", "MR"] and raw.images[0].shape == (1, 128, 128)
    assert float(ct.RescaleIntercept) == -1024  # the CT file's stored values are offset: Hounsfield units back
    np.testing.assert_array_equal(raw.images[0][0], ct.pixel_array.astype(np.float32) * float(ct.RescaleSlope)
                                  + float(ct.RescaleIntercept))
    assert raw.spacings[0] == pytest.approx((0.661468, 0.661468)) and raw.spacings[1] == pytest.approx((0.3125,) * 2)
    with pytest.raises(ValueError, match=r"JPEG-lossy.dcm: cannot decode DICOM pixels .*install a decoder") as e:
        read_dicom(get_testdata_file("JPEG-lossy.dcm"))  # 12-bit lossy JPEG: no decoder installed here
    assert "\n" not in str(e.value)  # one line, naming the file
    dose, spacing = read_dicom(get_testdata_file("rtdose.dcm"))  # a real multi-frame file: frames last
    assert dose.shape == (10, 10, 15) and spacing == pytest.approx((10.0, 10.0, 5.0))
    arrays, attrs = load_source(DataConfig(source=str(tmp_path), image_size=32))  # through ingest's preparation
    assert arrays["images"].shape == (12, 1, 32, 32) and attrs["source_spacing"]["ct0.dcm"] == pytest.approx(
        [0.661468, 0.661468])


def test_a_series_folder_is_ordered_by_position_and_equals_its_nifti(tmp_path):
    rng = np.random.RandomState(0)
    volume = rng.randint(0, 400, (12, 10, 6)).astype(np.float32) * 2 - 100  # values the rescale can represent
    # the series' own geometry (`_slice`: rows along +y at 0.5 mm, columns along +x at 0.7 mm, slices along +z at 2.5
    # mm from (10, -5, -30) in DICOM's LPS), written as a RAS affine: the same voxels in the same places
    lps = np.array([[0, 0.7, 0, 10.0], [0.5, 0, 0, -5.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps), tmp_path / "vol.nii.gz")
    series, uid = tmp_path / "series", generate_uid()
    series.mkdir()
    names = rng.permutation(6)  # file names and instance numbers both disagree with the slice order
    for k in range(6):
        _slice(series / f"IM{names[k]:04d}", volume[:, :, k], z=-30.0 + 2.5 * k, series=uid, instance=6 - k)
    (tmp_path / "labels.csv").write_text("filename,label\nseries,a\nvol.nii.gz,b\n")
    raw = read_folder(tmp_path)
    assert raw.images[0].shape == (1, 10, 12, 6)  # reoriented to RAS: the column (x) axis first
    nifti = read_nifti(tmp_path / "vol.nii.gz")
    np.testing.assert_array_equal(raw.images[0][0], nifti.pixels)
    np.testing.assert_allclose(raw.affines[0], nifti.affine, atol=1e-6)
    assert raw.orientations == ["PLS", "PLS"] and nib.aff2axcodes(raw.affines[0]) == ("R", "A", "S")
    assert raw.spacings[0] == pytest.approx((0.7, 0.5, 2.5)) and raw.spacings[1] == pytest.approx((0.7, 0.5, 2.5))

    _slice(series / "odd", np.zeros((8, 10), np.float32), z=100.0, series=uid, instance=7)  # another shape
    with pytest.raises(ValueError, match=r"series/odd: slice of 8x10 pixels in a series of 12x10"):
        read_dicom(series)
    (series / "odd").unlink()
    _slice(series / "other", volume[:, :, 0], z=200.0, series=generate_uid(), instance=8)  # another series
    with pytest.raises(ValueError, match=r"series: holds 2 series"):
        read_dicom(series)
    (series / "other").unlink()
    _slice(series / "twice", volume[:, :, 0], z=-30.0, series=uid, instance=9)  # a slice position twice
    with pytest.raises(ValueError, match=r"same position as"):
        read_dicom(series)


def test_an_io_error_of_the_file_system_is_passed_on_not_called_bad_input(tmp_path, monkeypatch):
    """An EIO from a network file system is an OSError the task's retry policy retries; a corrupt file is a
    ValueError naming it (never retried)."""
    import errno

    import nibabel as nib

    from motfm_core.data.readers import read_nifti

    def flaky(path):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(nib, "load", flaky)
    with pytest.raises(OSError) as info:
        read_nifti(tmp_path / "a.nii.gz")
    assert not isinstance(info.value, ValueError) and info.value.errno == errno.EIO
    monkeypatch.undo()
    (tmp_path / "b.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="b.nii.gz: cannot read NIfTI"):
        read_nifti(tmp_path / "b.nii.gz")
