(function(){
"use strict";
function sortKey(cell, kind){
  var v = cell ? cell.getAttribute("data-sort") : "";
  if (kind === "text") return v || "";
  return (v === null || v === "") ? NaN : parseFloat(v);
}
document.querySelectorAll("table.sortable").forEach(function(table){
  var heads = table.querySelectorAll("thead th[aria-sort]");
  heads.forEach(function(th){
    var button = th.querySelector("button");
    button.addEventListener("click", function(){
      var col = parseInt(button.getAttribute("data-col"), 10);
      var kind = button.getAttribute("data-kind") || "number";
      var current = th.getAttribute("aria-sort");
      var first = kind === "text" ? "ascending" : (button.getAttribute("data-dir") === "down" ? "ascending" : "descending");
      var order = current === "none" ? first : (current === "ascending" ? "descending" : "ascending");
      heads.forEach(function(h){ h.setAttribute("aria-sort", "none"); });
      th.setAttribute("aria-sort", order);
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var sign = order === "ascending" ? 1 : -1;
      rows.sort(function(a, b){
        var x = sortKey(a.cells[col], kind), y = sortKey(b.cells[col], kind);
        if (kind === "text") return sign * x.localeCompare(y);
        var xn = isNaN(x), yn = isNaN(y);
        if (xn || yn) return xn === yn ? 0 : (xn ? 1 : -1);  /* no value: always last */
        return sign * (x - y);
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
document.querySelectorAll(".curves").forEach(function(box){
  box.querySelectorAll(".legend input").forEach(function(input){
    input.addEventListener("change", function(){
      var m = input.getAttribute("data-method");
      box.querySelectorAll("polyline").forEach(function(line){
        if (line.getAttribute("data-method") === m) line.classList.toggle("hidden", !input.checked);
      });
    });
  });
});
function el(tag, cls, text){
  var e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
document.querySelectorAll(".explorer").forEach(function(box){
  var data = JSON.parse(document.getElementById(box.getAttribute("data-source")).textContent);
  var pick = box.querySelector(".pick"), count = box.querySelector(".count");
  var base = box.querySelector(".input img"), caption = box.querySelector(".input figcaption");
  var cards = box.querySelector(".cards");
  function show(i){
    var img = data.images[i];
    pick.value = String(i);
    count.textContent = (i + 1) + " / " + data.images.length;
    base.src = img.src;
    base.alt = "image " + img.id + " as the model saw it";
    caption.textContent = img.id + " · true class: " + img.truth + (img.explained ? " · the classifier's maps explain: " + img.explained : "");
    cards.textContent = "";
    data.methods.forEach(function(m, k){
      var card = el("figure", "card");
      card.setAttribute("data-method", m.name);
      var frame = el("div", "frame");
      var under = el("img", "grey");
      under.src = img.src; under.alt = "";
      frame.appendChild(under);
      if (img.maps[k]){
        var heat = el("img", "heat" + (m.patch ? " patch" : ""));
        heat.src = img.maps[k];
        heat.alt = m.label + " map of " + img.id;
        frame.appendChild(heat);
      }
      card.appendChild(frame);
      var cap = el("figcaption");
      cap.appendChild(el("strong", "", m.label));
      cap.appendChild(el("div", "", img.targets[k] ? "explains: " + img.targets[k] + (m.own ? " (its own model)" : "") : "no map"));
      var rows = ((data.scores[m.name] || {})[img.id]) || [];
      if (rows.length){
        var t = el("table", "scores");
        rows.forEach(function(r){
          var tr = el("tr");
          tr.appendChild(el("th", "", r[0] + (r[2] ? " " + r[2] : "")));
          tr.appendChild(el("td", "", r[1] === null ? "n/a" : r[1].toFixed(2)));
          t.appendChild(tr);
        });
        cap.appendChild(t);
      }
      card.appendChild(cap);
      cards.appendChild(card);
    });
  }
  var n = data.images.length, at = 0;
  pick.addEventListener("change", function(){ at = parseInt(pick.value, 10); show(at); });
  box.querySelector(".prev").addEventListener("click", function(){ at = (at + n - 1) % n; show(at); });
  box.querySelector(".next").addEventListener("click", function(){ at = (at + 1) % n; show(at); });
  if (n) show(0);
});
})();
