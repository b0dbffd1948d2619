(function () {
  "use strict";
  const box = document.getElementById("search");
  const items = Array.from(document.querySelectorAll("#names li"));
  const count = document.getElementById("search-count");
  function filter() {
    const words = box.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const li of items) {
      const name = li.getAttribute("data-name").toLowerCase();
      const hit = words.every((w) => name.includes(w));
      li.hidden = !hit;
      if (hit) shown++;
    }
    count.textContent = shown + " of " + items.length;
  }
  box.addEventListener("input", filter);
  filter();
  window.nnfeatReport = { filter: filter, ready: true };
})();
