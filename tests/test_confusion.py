"""The detection confusion matrix (minidet.evaluation.confusion) against counts worked out by
hand on a written two-image, two-class COCO example, and its figure."""

import cv2
import numpy as np

from minidet.evaluation.confusion import CONF_IOU_THRESH, CONF_SCORE_THRESH, confusion_matrix
from minidet.plots import plot_confusion_matrix


def _example() -> tuple[dict, list[dict]]:
    gt = {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
          "categories": [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}],  # index order: a (3), b (7)
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 0},   # A1
              {"id": 2, "image_id": 1, "category_id": 7, "bbox": [20, 0, 10, 10], "iscrowd": 0},  # B1
              {"id": 3, "image_id": 1, "category_id": 3, "bbox": [50, 50, 20, 20], "iscrowd": 1},  # crowd
              {"id": 4, "image_id": 2, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 0},   # A2
              {"id": 5, "image_id": 2, "category_id": 7, "bbox": [30, 30, 10, 10], "iscrowd": 0},  # B2
          ]}
    a, b = 3, 7
    results = [
        {"image_id": 1, "category_id": a, "bbox": [0, 0, 10, 10], "score": 0.9},   # d1: A1, IoU 1 -> [a, a]
        {"image_id": 1, "category_id": a, "bbox": [21, 0, 10, 10], "score": 0.8},  # d2: B1, IoU 90/110 -> [a, b]
        {"image_id": 1, "category_id": b, "bbox": [1, 0, 10, 10], "score": 0.7},   # d3: A1 taken (IoU .82 < 1) -> [b, bg]
        {"image_id": 1, "category_id": b, "bbox": [55, 55, 10, 10], "score": 0.6},  # d4: inside the crowd: not counted
        {"image_id": 1, "category_id": a, "bbox": [0, 0, 10, 10], "score": 0.1},   # d5: under the score threshold
        {"image_id": 1, "category_id": b, "bbox": [100, 100, 10, 10], "score": 0.3},  # d6: nothing there -> [b, bg]
        {"image_id": 2, "category_id": a, "bbox": [0, 0, 10, 20], "score": 0.5},   # d7: A2, IoU 100/200 = 0.5 -> [a, a]
        {"image_id": 2, "category_id": b, "bbox": [30, 36, 10, 10], "score": 0.9},  # d8: B2, IoU 40/160 -> [b, bg]
    ]  # B2 unmatched -> [bg, b]; image 3 has nothing
    return gt, results


def test_confusion_matrix_by_hand():
    gt, results = _example()
    assert (CONF_IOU_THRESH, CONF_SCORE_THRESH) == (0.45, 0.25)
    expected = np.array([[2, 1, 0],    # predicted a: true a, true b, background (false positive)
                         [0, 0, 3],    # predicted b
                         [0, 1, 0]])   # missed: B2 (the crowd region is never a missed object)
    np.testing.assert_array_equal(confusion_matrix(gt, results), expected)
    # a lower score threshold lets d5 in: it ties with d1 on A1 and loses (d1 comes first) -> [a, bg]
    low = expected.copy()
    low[0, 2] += 1
    np.testing.assert_array_equal(confusion_matrix(gt, results, score_thresh=0.05), low)
    # IoU 0.6: d7 (IoU 0.5) no longer matches A2 -> d7 [a, bg] and A2 missed [bg, a]
    strict = expected.copy()
    strict[0, 0] -= 1
    strict[0, 2] += 1
    strict[2, 0] += 1
    np.testing.assert_array_equal(confusion_matrix(gt, results, iou_thresh=0.6), strict)


def test_matching_is_one_to_one_by_decreasing_iou():
    """Two detections on two objects: the best pair first, then the best remaining pair (keeping
    each detection's best object first, as Ultralytics does, gives both detections object 0, and
    then the second detection stays unmatched and object 1 missed)."""
    gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [4, 0, 10, 10]}]}
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # IoU 1 / 0.43
               {"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.8}]  # IoU 90/110 / 70/130
    np.testing.assert_array_equal(confusion_matrix(gt, results, iou_thresh=0.45), [[2, 0], [0, 0]])


def test_confusion_figure(tmp_path):
    gt, results = _example()
    path = plot_confusion_matrix(confusion_matrix(gt, results), ["a", "b"], tmp_path / "cm.png")
    img = cv2.imread(str(path))
    assert img is not None and img.shape == (640, 640, 3) and (img < 200).mean() > 0.01
