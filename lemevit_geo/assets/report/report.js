/* lemevit-geo map report: draws the layers of the JSON in #report-data with Leaflet (CRS.Simple in the
   scene's own map coordinates: x east, y north). Nothing is fetched; every image is a data URI. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var state = { ready: false, features: {}, bases: data.bases.length, overlays: data.overlays.length };
  window.lemevitReport = state;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(value) {
    if (typeof value === "number") {
      if (Number.isInteger(value)) return value.toLocaleString("en");
      return Math.abs(value) >= 1000 ? value.toFixed(1) : Number(value.toPrecision(4)).toString();
    }
    if (value === null || value === undefined) return "";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  var b = data.bounds;
  var bounds = L.latLngBounds([b[1], b[0]], [b[3], b[2]]);
  var map = L.map("map", { crs: L.CRS.Simple, zoomSnap: 0.25, zoomDelta: 0.5, minZoom: -60, maxZoom: 60,
                           attributionControl: false });
  map.fitBounds(bounds);
  var fit = map.getZoom();
  map.setMinZoom(fit - 3);
  map.setMaxZoom(Math.max(fit + 3, Math.log2(16 / data.native_pixel)));
  map.setMaxBounds(bounds.pad(1));

  /* the title, the CRS, the mouse position in map coordinates */
  document.getElementById("title").textContent = data.title;
  document.getElementById("crs").textContent = "CRS " + data.crs + " \u00b7 overview " + data.overview;
  var Coords = L.Control.extend({
    onAdd: function () { this._div = L.DomUtil.create("div", "coords"); return this._div; },
    show: function (ll) { this._div.textContent = "x " + ll.lng.toFixed(2) + "  y " + ll.lat.toFixed(2); }
  });
  var coords = new Coords({ position: "bottomleft" }).addTo(map);
  coords.show(bounds.getCenter());
  map.on("mousemove", function (e) { coords.show(e.latlng); });

  var layersBox = document.getElementById("layers");
  layersBox.appendChild(el("h2", {}, "Layers"));

  /* base images: one at a time (a toggle between the dates of a change pair) */
  var bases = data.bases.map(function (base, i) {
    var layer = L.imageOverlay(base.url, bounds, { interactive: false, className: "base pixelated" });
    var row = el("label", { "class": "layer" });
    var radio = el("input", { type: "radio", name: "base", value: String(i), "data-base": base.name });
    if (i === 0) { radio.checked = true; layer.addTo(map); }
    radio.addEventListener("change", function () {
      bases.forEach(function (other) { map.removeLayer(other); });
      layer.addTo(map).bringToBack();
    });
    row.appendChild(radio);
    row.appendChild(el("span", {}, base.name));
    layersBox.appendChild(row);
    return layer;
  });

  function popup(props) {
    var first = ["class_name", "score", "probability", "angle", "length", "width", "area", "top_k"];
    var keys = first.filter(function (k) { return k in props; });
    Object.keys(props).forEach(function (k) { if (keys.indexOf(k) < 0) keys.push(k); });
    var table = el("table", { "class": "popup" });
    keys.forEach(function (k) {
      var tr = el("tr");
      tr.appendChild(el("td", {}, k === "class_name" ? "class" : k));
      tr.appendChild(el("td", {}, fmt(props[k])));
      table.appendChild(tr);
    });
    return table;
  }

  function vectorLayer(overlay, i) {
    var pane = "vec" + i;
    map.createPane(pane).style.zIndex = String(450 + i);
    return L.geoJSON(overlay.geojson, {
      pane: pane,
      style: function (f) {
        var c = overlay.colors[f.properties.class_name] || "#ff00ff";
        return { color: c, weight: 1.5, opacity: 1, fillColor: c, fillOpacity: overlay.fill };
      },
      onEachFeature: function (f, layer) { layer.bindPopup(function () { return popup(f.properties); }); }
    });
  }

  /* overlays: class rasters with an opacity slider, vectors with popups */
  data.overlays.forEach(function (overlay, i) {
    var layer = overlay.type === "image"
      ? L.imageOverlay(overlay.url, bounds, { opacity: overlay.opacity, className: "classes pixelated", interactive: false })
      : vectorLayer(overlay, i);
    if (overlay.visible) layer.addTo(map);
    if (overlay.type === "vector") state.features[overlay.name] = overlay.geojson.features.length;
    var row = el("label", { "class": "layer" });
    var box = el("input", { type: "checkbox", "data-overlay": overlay.name });
    box.checked = overlay.visible;
    box.addEventListener("change", function () { if (box.checked) layer.addTo(map); else map.removeLayer(layer); });
    row.appendChild(box);
    row.appendChild(el("span", {}, overlay.name));
    if (overlay.type === "image") {
      var slider = el("input", { type: "range", min: "0", max: "100", value: String(Math.round(overlay.opacity * 100)),
                                 title: "opacity", "data-opacity": overlay.name });
      slider.addEventListener("input", function () { layer.setOpacity(slider.value / 100); });
      row.appendChild(slider);
    }
    layersBox.appendChild(row);
  });

  /* legends: every class with its colour and share */
  var legends = document.getElementById("legends");
  data.overlays.forEach(function (overlay) {
    var legend = overlay.legend;
    var box = el("div", { "class": "legend" });
    box.appendChild(el("h3", {}, overlay.name));
    box.appendChild(el("p", { "class": "muted" }, legend.title));
    legend.items.forEach(function (item) {
      var entry = el("div", { "class": "entry", "data-class": item.name });
      var swatch = el("span", { "class": "swatch" });
      swatch.style.background = item.color;
      entry.appendChild(swatch);
      entry.appendChild(el("span", {}, item.name));
      var share = item.share === null ? "" : (100 * item.share).toFixed(1) + " %";
      if (item.count !== null && overlay.type === "vector") share += " (" + fmt(item.count) + ")";
      entry.appendChild(el("span", { "class": "share" }, share));
      box.appendChild(entry);
    });
    if (legend.note) box.appendChild(el("p", { "class": "muted legend-note" }, legend.note));
    legends.appendChild(box);
  });

  /* the run summary */
  var summary = document.getElementById("summary");
  data.summary.forEach(function (row) {
    var tr = el("tr");
    tr.appendChild(el("td", {}, row[0]));
    tr.appendChild(el("td", {}, row[1]));
    summary.appendChild(tr);
  });
  document.getElementById("details").textContent = JSON.stringify(data.details, null, 2);
  state.ready = true;
})();
