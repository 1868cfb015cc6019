"""The peer side of eval/bench_peers.py, run in the peer's own virtual environment: ultralytics
YOLOv8n from its YAML (no weights downloaded), trained from scratch on one thread, then its last
weights predict the validation images into a COCO results file.

    python eval/peer_ultralytics.py DATA_YAML IMG_SIZE EPOCHS BATCH OUT GT_JSON SEED
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from ultralytics import YOLO  # noqa: E402


def main() -> int:
    data_yaml, imgsz, epochs, batch, out, gt_json, seed = sys.argv[1:8]
    imgsz, epochs, batch, seed = int(imgsz), int(epochs), int(batch), int(seed)
    model = YOLO("yolov8n.yaml")  # the architecture only: nothing is downloaded
    model.train(data=data_yaml, imgsz=imgsz, epochs=epochs, batch=batch, workers=0, device="cpu", project=out,
                name="train", exist_ok=True, pretrained=False, amp=False, plots=False, seed=seed, verbose=False)
    last = Path(out) / "train" / "weights" / "last.pt"
    gt = json.loads(Path(gt_json).read_text())
    by_stem = {Path(im["file_name"]).stem: im["id"] for im in gt["images"]}
    cat_ids = [c["id"] for c in gt["categories"]]
    results = []
    trained = YOLO(str(last))
    for im in gt["images"]:
        pred = trained.predict(im["file_name"], imgsz=imgsz, conf=0.001, iou=0.7, max_det=100, device="cpu",
                               verbose=False)[0]
        for (x1, y1, x2, y2), score, cls in zip(pred.boxes.xyxy.tolist(), pred.boxes.conf.tolist(),
                                                 pred.boxes.cls.tolist(), strict=True):
            results.append({"image_id": by_stem[Path(im["file_name"]).stem], "category_id": cat_ids[int(cls)],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    (Path(out) / "predictions.json").write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
