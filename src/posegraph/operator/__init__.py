"""The posegraph operator: PosePipeline and PoseJob custom resources, reconciled with kopf."""
