"""`medtransfer segment` on real scans: masks in each scan's own geometry, DICOM-SEG, bad input, no overwrite.

The model is a tiny, untrained DynUNet exported as a bundle that resamples to 3 mm (so 512x512 CT series stay
fast); untrained weights give irregular masks, which is what a geometry / frame-order test wants.
"""

import argparse
import csv
import shutil

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medtransfer.data.dicom import read_series, select_series
from medtransfer.inference.bundle_loading import BundleError
from medtransfer.inference.cli_commands import register
from medtransfer.inference.dicom_seg import read_dicom_seg
from medtransfer.inference.segment import SUMMARY_COLUMNS, SegmentError, find_scans, segment
from tests.inference.test_bundle_loading import copy_bundle, make_bundle, make_run

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")

LIVER_CT = ("dicom_ct_liver_seg", "ct_3slice.nii.gz")
TOTALSEG_CT = ("dicom_ct_totalseg_example", "example_ct.nii.gz")
MR = "dicom_mr_brain_tumor_progression"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, test_data):
    return make_bundle(tmp_path_factory.mktemp("segment"), test_data)


def _by_scan(results):
    return {r.scan: r for r in results}


def _same_geometry(mask_path, reference_path):
    mask, reference = nib.load(mask_path), nib.load(reference_path)
    assert mask.shape == reference.shape
    assert np.allclose(mask.affine, reference.affine, atol=1e-4)
    assert mask.get_data_dtype() == np.uint8
    data = np.asarray(mask.dataobj)
    assert set(np.unique(data)) <= {0, 1}
    return data


def test_dicom_ct_series_get_masks_in_their_geometry_and_a_dicom_seg(bundle, test_data, tmp_path):
    """Both series sit in folders named `ct`: their names are made unique (description or short UID)."""
    folders = {name: test_data / name / "dicom" / "ct" for name, _ in (LIVER_CT, TOTALSEG_CT)}
    results = segment(bundle, [folders[LIVER_CT[0]], folders[TOTALSEG_CT[0]]], tmp_path / "out", progress=False)
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    liver_uid = select_series(folders[LIVER_CT[0]]).uid
    assert [r.scan for r in results] == [f"ct_{liver_uid[-8:]}", "ct_CT_Body_3.0"]

    for (dataset, nifti_copy), result in zip((LIVER_CT, TOTALSEG_CT), results):
        folder = folders[dataset]
        mask = _same_geometry(result.output_nifti, test_data / dataset / "images" / nifti_copy)
        assert 0 < mask.sum() < mask.size
        ct, meta = read_series(folder)
        series = meta["series"]
        assert mask.shape == ct.shape  # the NIfTI array is in read_series' (x, y, z) layout
        spacing = np.prod(meta["spacing"])
        assert result.n_voxels == int(mask.sum())
        assert result.volume_ml == pytest.approx(mask.sum() * spacing / 1000, rel=1e-4)

        seg = hd.seg.segread(result.output_dicom_seg)
        assert seg.StudyInstanceUID == series.study_uid
        assert seg.FrameOfReferenceUID == series.frame_of_reference_uid
        referenced = seg.ReferencedSeriesSequence[0]
        assert referenced.SeriesInstanceUID == series.uid
        assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == set(
            series.sop_instance_uids
        )
        assert seg.SegmentSequence[0].SegmentLabel == "hippocampus"
        assert pydicom.dcmread(result.output_dicom_seg).Modality == "SEG"
        assert np.array_equal(read_dicom_seg(result.output_dicom_seg, series), mask)

    with open(tmp_path / "out" / "summary.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert float(rows[1]["volume_ml"]) == pytest.approx(results[1].volume_ml)


def test_mr_series_folder_and_hippocampus_nifti_go_through_the_bundle(bundle, test_data, tmp_path):
    images = test_data / "msd_hippocampus" / "images"
    nifti = [images / "hippocampus_001.nii.gz", images / "hippocampus_003.nii.gz"]
    results = _by_scan(segment(bundle, [test_data / MR / "dicom", *nifti], tmp_path / "out", progress=False))
    assert set(results) == {"HippoCrop_artificial", "PGBM-003_FLAIRreg", "PGBM-003_T1post",
                            "hippocampus_001", "hippocampus_003"}
    assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
    for name in ("HippoCrop_artificial", "PGBM-003_FLAIRreg", "PGBM-003_T1post"):
        _same_geometry(results[name].output_nifti, test_data / MR / "images" / f"{name}.nii.gz")
        assert results[name].output_dicom_seg.endswith(f"{name}_seg.dcm")
    for path in nifti:
        result = results[path.name.replace(".nii.gz", "")]
        _same_geometry(result.output_nifti, path)
        assert result.output_dicom_seg is None
        written, original = nib.load(result.output_nifti).header, nib.load(path).header
        assert written.get_qform(coded=True)[1] == original.get_qform(coded=True)[1]  # the input's header is kept
        assert written.get_sform(coded=True)[1] == original.get_sform(coded=True)[1]


def _structured_report(path):
    """A minimal Basic Text SR: a non-image object that clinical exports put next to the slices."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report = Dataset()
    report.file_meta = meta
    report.SOPClassUID, report.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    report.Modality, report.SeriesInstanceUID, report.StudyInstanceUID = "SR", generate_uid(), generate_uid()
    report.save_as(path, enforce_file_format=True)


def _hippocrop(test_data, target, skip=(), duplicate=None):
    source = test_data / MR / "dicom" / "HippoCrop_artificial"
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.name not in skip:
            shutil.copy(path, target / path.name)
    if duplicate:
        shutil.copy(source / duplicate, target / f"copy_of_{duplicate}")
    return target


def test_bad_scans_are_reported_by_file_and_the_others_still_segmented(bundle, test_data, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(test_data / "msd_hippocampus" / "images" / "hippocampus_001.nii.gz", scans)
    (scans / "broken.nii.gz").write_bytes(b"not a nifti file")
    shutil.copy(test_data / "hc18_fetal_head" / "images" / "159_HC.png", scans / "ultrasound_2d.png")
    mixed = _hippocrop(test_data, scans / "mixed")
    for path in (test_data / LIVER_CT[0] / "dicom" / "ct").iterdir():
        shutil.copy(path, mixed / f"liver_{path.name}")
    _hippocrop(test_data, scans / "gap", skip=("20.dcm",))
    _hippocrop(test_data, scans / "duplicated", duplicate="7.dcm")
    with_report = _hippocrop(test_data, scans / "with_report")
    _structured_report(with_report / "report.dcm")
    shutil.copy(test_data / LIVER_CT[0] / "dicom" / "seg" / "liver_seg.dcm", with_report / "seg.dcm")

    results = _by_scan(segment(bundle, scans, tmp_path / "out", progress=False))
    assert {k: r.status for k, r in results.items()} == {
        "hippocampus_001": "ok", "broken": "failed", "ultrasound_2d": "failed", "mixed": "failed",
        "gap": "failed", "duplicated": "failed", "with_report": "ok",
    }
    assert "broken.nii.gz is not a gzip file" in results["broken"].error
    assert "ultrasound_2d.png: a 2D image (shape (512, 346)) given to a 3D network" in results["ultrasound_2d"].error
    assert f"{scans / 'mixed'}: holds 2 image series" in results["mixed"].error
    assert "--series-uid" in results["mixed"].error and "HippoCrop" in results["mixed"].error
    assert "gap of 2.000 mm" in results["gap"].error and "19.dcm" in results["gap"].error
    assert "--allow-uneven" in results["gap"].error
    assert "duplicated slice positions: 7.dcm and copy_of_7.dcm" in results["duplicated"].error
    warnings = " ".join(results["with_report"].warnings)
    assert "report.dcm" in warnings and "seg.dcm" in warnings and "non-image" in warnings
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "hippocampus_001_seg.nii.gz", "summary.csv", "with_report_seg.dcm", "with_report_seg.nii.gz",
    ]

    liver_uid = select_series(test_data / LIVER_CT[0] / "dicom" / "ct").uid
    picked = find_scans([scans], series_uid=liver_uid)  # one series chosen: of the DICOM folders, the one with it
    assert [(s.name, s.series.uid) for s in picked if s.series] == [("mixed", liver_uid)]

    chosen = segment(bundle, [mixed, scans / "gap"], tmp_path / "out2", series_uid="all", allow_uneven=True,
                     progress=False)
    assert [(r.scan, r.status) for r in chosen] == [
        ("mixed_HippoCrop", "ok"), (f"mixed_{liver_uid[-8:]}", "ok"),
        ("gap", "ok"),
    ]
    assert any("probably missing" in w for w in chosen[2].warnings)
    _same_geometry(chosen[0].output_nifti, test_data / MR / "images" / "HippoCrop_artificial.nii.gz")


def test_existing_outputs_are_never_overwritten_without_overwrite(bundle, test_data, tmp_path):
    """A collaborator's edited mask survives a second call (an output inside an input folder is refused: see
    tests/hostile/test_segment.py)."""
    scans = tmp_path / "scans"
    scans.mkdir()
    scan = shutil.copy(test_data / "msd_hippocampus" / "images" / "hippocampus_001.nii.gz", scans)
    out = tmp_path / "masks"
    assert [r.scan for r in segment(bundle, scans, out, progress=False)] == ["hippocampus_001"]
    mask = out / "hippocampus_001_seg.nii.gz"
    mask.write_bytes(b"the collaborator's edited mask")
    with pytest.raises(SegmentError, match=r"(?s)2 output file\(s\) already exist.*hippocampus_001_seg.nii.gz.*--overwrite"):
        segment(bundle, scan, out, progress=False)
    assert mask.read_bytes() == b"the collaborator's edited mask"
    assert [(r.scan, r.status) for r in segment(bundle, scans, out, overwrite=True, progress=False)] == [
        ("hippocampus_001", "ok")]
    assert nib.load(mask).shape == nib.load(scan).shape


def test_a_bundle_with_changed_weights_is_refused_before_anything_is_written(bundle, test_data, tmp_path):
    copy = copy_bundle(bundle, tmp_path / "bundle")
    with open(copy / "models" / "model.pt", "r+b") as stream:
        stream.seek(-20, 2)
        stream.write(b"\x00" * 8)
    with pytest.raises(BundleError, match="does not match"):
        segment(copy, test_data / "msd_hippocampus" / "images" / "hippocampus_001.nii.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _cli(argv):
    parser = argparse.ArgumentParser(prog="medtransfer")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_segments_with_a_run_folder_and_exits_nonzero_on_a_failed_scan(test_data, tmp_path, capsys):
    run = make_run(tmp_path / "run", test_data, strategy="scratch")
    good = test_data / "msd_hippocampus" / "images" / "hippocampus_001.nii.gz"
    code = _cli(["segment", str(run), str(good), str(tmp_path / "missing.nii.gz"), "--output", str(tmp_path / "out"),
                 "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "hippocampus_001  ok" in printed and "missing.nii.gz: input not found" in printed
    assert "1 of 2 scans segmented" in printed
    _same_geometry(tmp_path / "out" / "hippocampus_001_seg.nii.gz", good)
    assert _cli(["segment", str(run), str(good), "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "already exist" in capsys.readouterr().err


# --- device, TTA, ensembles, post-processing, segment codes --------------------------------------------------


def test_device_auto_prefers_cuda_then_mps_and_unavailable_devices_are_clear_errors(monkeypatch, capsys):
    from medtransfer.inference.segment import DeviceError, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"'cuda:3': only 2 CUDA device\(s\) here"):
        resolve_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match="'mps': Apple MPS is not available"):
        resolve_device("mps")
    with pytest.raises(DeviceError, match="'cuda': CUDA is not available"):
        resolve_device("cuda")
    assert _cli(["segment", "model", "scan.nii.gz", "--output", "out", "--device", "gpu"]) == 2
    assert "error: unknown device 'gpu'" in capsys.readouterr().err


def _tiny_model(source, filters=(8, 16, 32), in_channels=1, spacing=None, **metadata):
    from monai.transforms import Compose

    from medtransfer.data import eval_transforms
    from medtransfer.inference.bundle_loading import SegmentationModel
    from medtransfer.networks import build_dynunet

    return SegmentationModel(
        network=build_dynunet(3, in_channels=in_channels, filters=filters, init_seed=len(source)).eval(),
        spatial_dims=3, roi_size=[16, 16, 16], source=source, metadata={"clinical": metadata},
        preprocessing=eval_transforms(3, target_spacing=spacing, with_label=False) if spacing else Compose([]),
    )


def test_tta_averages_all_flips_and_an_ensemble_averages_models():
    from medtransfer.inference.segment import flip_axes, probabilities

    assert flip_axes(2) == [(), (2,), (3,), (2, 3)] and len(flip_axes(3)) == 8
    a, b = _tiny_model("run A"), _tiny_model("run BB")
    image = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    single = probabilities([a], image)
    assert torch.allclose(single, torch.softmax(a.predict(image), 1))
    expected = torch.stack([
        torch.softmax(a.predict(image.flip(axes) if axes else image), 1).flip(axes) if axes
        else torch.softmax(a.predict(image), 1) for axes in flip_axes(3)
    ]).mean(0)
    tta = probabilities([a], image, tta=True)
    assert torch.allclose(tta, expected, atol=1e-6) and not torch.allclose(tta, single, atol=1e-4)
    assert torch.allclose(probabilities([a, b], image), (single + probabilities([b], image)) / 2, atol=1e-6)


def test_ensembles_of_other_architectures_or_channels_and_tta_on_lateralised_models_are_refused():
    from medtransfer.inference.segment import EnsembleError, check_ensemble, check_tta

    a = _tiny_model("run A")
    check_ensemble([a, _tiny_model("run A2")])
    with pytest.raises(EnsembleError, match=r"run B vs run A: different architectures \(parameters differ"):
        check_ensemble([a, _tiny_model("run B", filters=(8, 16, 64))])
    with pytest.raises(EnsembleError, match=r"run C vs run A: 2 input channel\(s\) vs 1"):
        check_ensemble([a, _tiny_model("run C", in_channels=2)])
    with pytest.raises(EnsembleError, match=r"run D vs run A: trained at different spacings"):
        check_ensemble([a, _tiny_model("run D", spacing=[2.0, 2.0, 2.0])])
    with pytest.raises(EnsembleError, match="bundle L: --tta flips the image, but .* lateralised"):
        check_tta([a, _tiny_model("bundle L", lateralised_anatomy=True)])


def _components(path):
    from scipy import ndimage

    mask = np.asarray(nib.load(path).dataobj)
    return ndimage.label(mask, structure=np.ones((3, 3, 3)))[1], int(mask.sum())


def test_learned_postprocessing_of_a_run_is_applied_unless_disabled(test_data, tmp_path):
    import json

    run = make_run(tmp_path / "run", test_data, strategy="scratch")
    record = json.loads((run / "run.json").read_text())
    record["postprocessing"] = {"method": "keep_largest_component", "validation_dice": {"none": 0.5}}
    (run / "run.json").write_text(json.dumps(record))
    scan = test_data / "msd_hippocampus" / "images" / "hippocampus_001.nii.gz"
    raw = segment(run, scan, tmp_path / "raw", postprocess=False, progress=False)[0]
    kept = segment(run, scan, tmp_path / "kept", progress=False)[0]
    raw_count, raw_voxels = _components(raw.output_nifti)
    kept_count, kept_voxels = _components(kept.output_nifti)
    assert raw_count > 1 and kept_count == 1  # the untrained network's mask is fragmented
    assert 0 < kept_voxels < raw_voxels and kept.n_voxels == kept_voxels

    record["postprocessing"] = {"method": "dilate"}
    (run / "run.json").write_text(json.dumps(record))
    with pytest.raises(BundleError, match="run.json postprocessing: unknown post-processing method 'dilate'"):
        segment(run, scan, tmp_path / "bad", progress=False)


def test_ensemble_and_tta_run_end_to_end_from_the_cli(bundle, test_data, tmp_path, capsys):
    scan = test_data / "msd_hippocampus" / "images" / "hippocampus_001.nii.gz"
    assert _cli(["segment", str(bundle), str(bundle), str(scan), "--output", str(tmp_path / "ens"), "--tta",
                 "--no-progress", "--device", "auto"]) == 0
    printed = capsys.readouterr().out
    assert "device: cpu (auto" in printed and "ensemble of 2 models" in printed
    single = segment(bundle, scan, tmp_path / "single", tta=True, progress=False)[0]
    # the same model twice averages to the same probabilities: the same mask
    assert np.array_equal(np.asarray(nib.load(single.output_nifti).dataobj),
                          np.asarray(nib.load(tmp_path / "ens" / "hippocampus_001_seg.nii.gz").dataobj))
