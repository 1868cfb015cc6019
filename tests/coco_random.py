"""Random COCO ground truth and results for the evaluation tests and benchmark."""

import numpy as np


def random_coco(seed: int, n_images: int = 30, n_cats: int = 5, max_gts: int = 12, dets_per_image: int = 40,
                crowd_prob: float = 0.1, tie_scores: bool = False, empty_cat: bool = True,
                fixed_dets: bool = False):
    """-> (gt dict, results list): gts of all sizes (small / medium / large), some crowd,
    images without gts, detections near gts (good, poor and duplicate) and random ones."""
    rng = np.random.default_rng(seed)
    images = [{"id": int(i * 3 + 1), "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(n_images)]
    cats = [{"id": int(c * 2 + 1), "name": f"c{c}"} for c in range(n_cats + (1 if empty_cat else 0))]
    used_cats = [c["id"] for c in cats[:n_cats]]
    anns, results = [], []
    for im in images:
        n_gt = int(rng.integers(0, max_gts + 1)) if rng.random() > 0.1 else 0
        first = len(anns)
        for _ in range(n_gt):
            side = float(np.exp(rng.uniform(np.log(4), np.log(300))))
            w, h = side * rng.uniform(0.5, 1.5), side * rng.uniform(0.5, 1.5)
            x, y = rng.uniform(0, 640 - min(w, 600)), rng.uniform(0, 480 - min(h, 450))
            crowd = int(rng.random() < crowd_prob)
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": int(rng.choice(used_cats)),
                         "bbox": [x, y, w, h], "area": w * h * rng.uniform(0.6, 1.0), "iscrowd": crowd})
        gts_here = anns[first:]
        n_det = dets_per_image if fixed_dets else int(rng.integers(0, dets_per_image + 1))
        for _ in range(n_det):
            if gts_here and rng.random() < 0.7:
                g = gts_here[int(rng.integers(len(gts_here)))]
                x, y, w, h = g["bbox"]
                j = rng.normal(0, 0.15, 4) * [w, h, w, h]
                box = [x + j[0], y + j[1], max(0.5, w + j[2]), max(0.5, h + j[3])]
                cat = g["category_id"] if rng.random() < 0.85 else int(rng.choice(used_cats))
            else:
                w, h = rng.uniform(2, 200, 2)
                box = [rng.uniform(0, 600), rng.uniform(0, 450), w, h]
                cat = int(rng.choice(used_cats))
            score = float(np.round(rng.random(), 1)) if tie_scores else float(rng.random())
            results.append({"image_id": im["id"], "category_id": cat, "bbox": [float(v) for v in box], "score": score})
    return {"images": images, "annotations": anns, "categories": cats}, results
