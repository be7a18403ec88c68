"""`.hdr` (ENVI/Analyze headers, text) and `.raw` (any dump of bytes) name data files as often as images: a
hyperspectral scan's header beside its data was told to be converted to an image format."""

from __future__ import annotations

from fewshot.data.image_files import unread_files_note


def test_header_and_raw_data_files_are_not_told_to_be_converted():
    note = unread_files_note("train", "in its class folders", ["scan.hdr", "scan.raw"])
    assert "2 file(s) in its class folders are not images by their extension" in note, note
    assert "convert" not in note and "image file(s)" not in note, note


def test_a_camera_raw_is_still_an_image_to_convert():
    note = unread_files_note("train", "in its class folders", ["IMG_1.CR2"])
    assert "1 image file(s) in its class folders are in a format fewshot does not read" in note, note
