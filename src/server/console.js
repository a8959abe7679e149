// Reloads a page marked <body data-refresh> every 10 s while it is visible. The console works
// without this script; it only saves pressing reload during a rollout.
(function () {
  if (!document.body || !document.body.hasAttribute("data-refresh")) return;
  setInterval(function () {
    if (document.visibilityState === "visible") location.reload();
  }, 10000);
})();
