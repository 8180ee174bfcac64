# Opens phalanx's parallel VTK files the way a user does in ParaView, and prints what ParaView
# sees as one JSON line: extents, point and cell counts, array names and ranges, and the colours
# of a rendered picture. Run with pvpython (under xvfb-run when there is no display):
#   pvpython check.py FIELD.pvti PARTICLES.pvtp PICTURE.png
import json
import sys

from paraview import servermanager
from paraview.simple import ColorBy, GetActiveViewOrCreate, OpenDataFile, Render, SaveScreenshot, Show
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkIOImage import vtkPNGReader

pvti, pvtp, png = sys.argv[1:4]
out = {}
# The readers ParaView picks for the files, by their extension.

image = OpenDataFile(pvti)
image.UpdatePipeline()
info = image.GetDataInformation()
# Two cells by position (x fastest): (x = nx/2, y = 0) and (x = 0, y = ny/2), to check the axis order.
data = servermanager.Fetch(image)
nx = info.GetExtent()[1] - info.GetExtent()[0]
ny = info.GetExtent()[3] - info.GetExtent()[2]
u = data.GetCellData().GetArray("u")
probe = [u.GetValue(nx // 2), u.GetValue((ny // 2) * nx)]
out["image"] = {
    "probe": probe,
    "extent": list(info.GetExtent()),
    "points": info.GetNumberOfPoints(),
    "cells": info.GetNumberOfCells(),
    "arrays": {a.GetName(): list(a.GetRange(0)) for a in image.CellData},
}

parts = OpenDataFile(pvtp)
parts.UpdatePipeline()
info = parts.GetDataInformation()
out["particles"] = {
    "points": info.GetNumberOfPoints(),
    "bounds": list(info.GetBounds()),
    "arrays": {a.GetName(): [list(a.GetRange(c)) for c in range(a.GetNumberOfComponents())] for a in parts.PointData},
}

view = GetActiveViewOrCreate("RenderView")
view.ViewSize = [320, 320]
view.OrientationAxesVisibility = 0
shown = Show(image, view)
shown.Representation = "Surface"  # ParaView's default for image data is an outline
ColorBy(shown, ("CELLS", "u"))
shown.RescaleTransferFunctionToDataRange(True, False)
view.ResetCamera()
Render(view)
SaveScreenshot(png, view, ImageResolution=[320, 320])

reader = vtkPNGReader()
reader.SetFileName(png)
reader.Update()
px = vtk_to_numpy(reader.GetOutput().GetPointData().GetScalars())[:, :3]
out["png"] = {
    "pixels": int(px.shape[0]),
    "distinct_colours": len({tuple(p) for p in px.tolist()}),
    "min": px.min(axis=0).tolist(),
    "max": px.max(axis=0).tolist(),
}
print(json.dumps(out))
