"""FaceNet on a vGPU: detect faces, embed them, compare them, and train a triplet embedding.

Built on facenet-pytorch, in one module per step:

* :mod:`.detection`: :func:`detect_faces` runs the real MTCNN detector (its three small networks
  ship inside the facenet-pytorch package, so nothing is downloaded) and returns boxes,
  probabilities and aligned 160x160 face crops, standardised the way InceptionResnetV1 expects.
* :mod:`.weights`: :func:`load_embedder` builds ``InceptionResnetV1(pretrained="vggface2")``
  through facenet-pytorch's own loader, but only when the checkpoint is already on disk:
  facenet-pytorch would otherwise download ~110 MB from GitHub, which a kernel without internet
  cannot do. Without it, :class:`FaceNetWeightsMissing` says where to put the file and where to
  get it.
* :mod:`.embedding`: :func:`embed`, :func:`distance_matrix` and :func:`compare_folder` turn faces
  into 512-d unit vectors and pairwise distances; :mod:`.plots` draws them (:func:`plot_distances`).
* :mod:`.sources` and :mod:`.triplet`: :func:`train_triplet` trains a small embedding net with a
  triplet loss on the vGPU (synthetic identities by default, or your labelled images) and reports
  images/s: the "face recognition training on a vGPU" tutorial.

torch, facenet-pytorch, PIL and matplotlib are imported inside the functions that need them.
"""

from .demo import run_demo
from .detection import IMAGE_EXTENSIONS, FaceDetection, detect_faces, load_image
from .embedding import EMBEDDING_SIZE, EmbeddingNet, FolderComparison, compare_folder, distance_matrix, embed
from .plots import plot_detections, plot_distances, plot_faces, plot_losses, plot_triplet
from .sources import LabeledImages, SyntheticIdentities, sample_photos
from .triplet import Separation, TripletResult, separation, train_triplet, triplet_loss
from .weights import CHECKPOINTS, FaceNetWeightsMissing, checkpoint_path, load_embedder, torch_home

__all__ = [
    "CHECKPOINTS",
    "EMBEDDING_SIZE",
    "IMAGE_EXTENSIONS",
    "FaceNetWeightsMissing",
    "FaceDetection",
    "FolderComparison",
    "SyntheticIdentities",
    "LabeledImages",
    "EmbeddingNet",
    "Separation",
    "TripletResult",
    "checkpoint_path",
    "torch_home",
    "detect_faces",
    "load_image",
    "load_embedder",
    "embed",
    "distance_matrix",
    "plot_distances",
    "plot_detections",
    "plot_faces",
    "plot_losses",
    "compare_folder",
    "sample_photos",
    "triplet_loss",
    "separation",
    "train_triplet",
    "plot_triplet",
    "run_demo",
]
