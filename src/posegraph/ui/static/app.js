// posegraph web UI: one page, two views (#/ and #/jobs/<id>). Everything shown comes from the
// server's API, which reads the results store; the page keeps no state a reload would lose.

const $ = (sel) => document.querySelector(sel);
const PERSON_COLORS = [0x4cc9f0, 0xf72585, 0xffd166, 0x06d6a0, 0xef476f, 0x118ab2, 0xf8961e, 0x90be6d];
let META = null;
let THREE = null;
let OrbitControls = null;
let GLTFLoader = null;

// ---- messages ------------------------------------------------------------------------------------
function banner(text, kind = "error") {
  const el = $("#banner");
  if (!text) { el.hidden = true; el.textContent = ""; return; }
  el.className = kind;
  el.textContent = text;
  el.hidden = false;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error(`cannot reach the posegraph UI server (${err.message})`);
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = (body && body.error) || (typeof body === "string" && body) || response.statusText;
    const error = new Error(`${message} (HTTP ${response.status})`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// ---- 3D views (three.js) ----------------------------------------------------------------------------
// What both 3D views share: a renderer in the container, a scene, a camera the user orbits, kept to
// the container's size; each view adds what it shows.
class ThreeView {
  constructor(container, fov, near, far) {
    this.container = container;
    this.renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
    this.renderer.setPixelRatio(window.devicePixelRatio || 1);
    this.renderer.setClearColor(0x11151c);
    container.replaceChildren(this.renderer.domElement);
    this.scene = new THREE.Scene();
    this.camera = new THREE.PerspectiveCamera(fov, 4 / 3, near, far);
    this.controls = new OrbitControls(this.camera, this.renderer.domElement);
    this.controls.addEventListener("change", () => this.render());
    new ResizeObserver(() => this.resize()).observe(container);
  }

  resize() {
    const w = this.container.clientWidth || 400, h = this.container.clientHeight || 300;
    this.renderer.setSize(w, h, false);
    this.camera.aspect = w / h;
    this.camera.updateProjectionMatrix();
    this.render();
  }

  render() {
    this.renderer.render(this.scene, this.camera);
    this.container.dataset.rendered = String(Number(this.container.dataset.rendered || 0) + 1);
  }
}

class Skeleton3D extends ThreeView {
  constructor(container) {
    super(container, 40, 0.01, 100);
    this.camera.position.set(0.6, 0.5, 3.2);
    this.controls.target.set(0, 0, 0);
    const grid = new THREE.GridHelper(4, 16, 0x3a4356, 0x262c38);
    grid.position.y = -1.0;
    this.scene.add(grid);
    this.group = new THREE.Group();
    this.scene.add(this.group);
    this.resize();
  }

  // poses: [{k3: 17×[x, y, z] (camera frame: y down, z away), color}]; people side by side.
  set(poses) {
    // Playback replaces the skeletons every frame: free the old GPU buffers, not just the nodes.
    for (const child of this.group.children) { child.geometry.dispose(); child.material.dispose(); }
    this.group.clear();
    const edges = META.h36m_skeleton, left = new Set(META.h36m_left);
    const n = poses.length;
    poses.forEach((pose, i) => {
      if (!pose.k3) return;
      const dx = (i - (n - 1) / 2) * 1.1;
      const pts = pose.k3.map(([x, y, z]) => new THREE.Vector3(x + dx, -y, -z));
      const positions = [], colors = [];
      const base = new THREE.Color(pose.color), side = new THREE.Color(0xff9f1c);
      for (const [a, b] of edges) {
        const c = left.has(a) || left.has(b) ? side : base;
        positions.push(pts[a].x, pts[a].y, pts[a].z, pts[b].x, pts[b].y, pts[b].z);
        colors.push(c.r, c.g, c.b, c.r, c.g, c.b);
      }
      const lines = new THREE.BufferGeometry();
      lines.setAttribute("position", new THREE.Float32BufferAttribute(positions, 3));
      lines.setAttribute("color", new THREE.Float32BufferAttribute(colors, 3));
      this.group.add(new THREE.LineSegments(lines, new THREE.LineBasicMaterial({ vertexColors: true })));
      const joints = new THREE.BufferGeometry().setFromPoints(pts);
      this.group.add(new THREE.Points(joints, new THREE.PointsMaterial({ color: 0xffffff, size: 0.04 })));
    });
    this.container.dataset.persons = String(poses.filter((p) => p.k3).length);
    this.fit();
    this.render();
  }

  // Frame what is drawn; keep the user's view while it still fits (no jumping during playback).
  fit() {
    const box = new THREE.Box3().setFromObject(this.group);
    if (box.isEmpty()) return;
    const sphere = box.getBoundingSphere(new THREE.Sphere());
    const radius = Math.max(sphere.radius, 0.3);
    if (this.fitted && radius < this.fitted * 1.5 && radius > this.fitted / 3) return;
    this.fitted = radius;
    const distance = radius / Math.sin((this.camera.fov * Math.PI) / 360) * 1.15;
    const direction = new THREE.Vector3(0.25, 0.2, 1).normalize();
    this.controls.target.copy(sphere.center);
    this.camera.position.copy(sphere.center).addScaledVector(direction, distance);
    this.camera.near = distance / 100;
    this.camera.far = distance * 10;
    this.camera.updateProjectionMatrix();
    this.controls.update();
  }
}

function make3D(container) {
  if (!THREE) {
    container.innerHTML = '<p class="unavailable">3D view unavailable: three.js is not vendored (run scripts/vendor-ui.sh).</p>';
    return null;
  }
  if (!container._view) container._view = new Skeleton3D(container);
  return container._view;
}

// ---- motion view: a track's GLB (armature + animation) on the floor, following the video ---------------
// The GLB is what /api/jobs/<id>/tracks/<n>.glb downloads: metres, Y up, floor at y = 0, one animation
// sampled at the track's frames (sample k at k / fps), and the scene's extras.posegraph with the
// frame_index of each sample, the fps and the foot contacts per sample.
// The floor as a textured plane, not a GridHelper: a grid's long lines that reach behind the camera
// were dropped whole by Chromium's software renderer (SwiftShader), leaving no floor under the feet
// (tests/artifacts/ui-motion-walk.png); a filled plane is clipped like any mesh.
function floorMesh(size, cell) {
  const px = 64, canvas = document.createElement("canvas");
  canvas.width = canvas.height = px;
  const g = canvas.getContext("2d");
  g.fillStyle = "#181d27"; g.fillRect(0, 0, px, px);
  g.strokeStyle = "#3a4356"; g.lineWidth = 3; g.strokeRect(0, 0, px, px);
  const texture = new THREE.CanvasTexture(canvas);
  texture.wrapS = texture.wrapT = THREE.RepeatWrapping;
  texture.repeat.set(size / cell, size / cell);
  texture.anisotropy = 8;
  texture.colorSpace = THREE.SRGBColorSpace;  // the canvas colours as drawn, not brightened
  const floor = new THREE.Mesh(new THREE.PlaneGeometry(size, size),
                               new THREE.MeshBasicMaterial({ map: texture, polygonOffset: true, polygonOffsetFactor: 1 }));
  floor.rotation.x = -Math.PI / 2;
  return floor;
}

class MotionView extends ThreeView {
  constructor(container) {
    super(container, 45, 0.05, 200);
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x445066, 2.2));
    const sun = new THREE.DirectionalLight(0xffffff, 1.5);
    sun.position.set(2, 5, 3);
    this.scene.add(sun);
    this.grid = floorMesh(40, 0.5);  // the floor, y = 0, 0.5 m squares
    this.scene.add(this.grid);
    // Foot contacts: a disc on the floor under each ankle while that foot is planted.
    this.discs = [0xff9f1c, 0x4cc9f0].map((color) => {
      const disc = new THREE.Mesh(new THREE.CircleGeometry(0.09, 32),
                                  new THREE.MeshBasicMaterial({ color, transparent: true, opacity: 0.85 }));
      disc.rotation.x = -Math.PI / 2;
      disc.visible = false;
      this.scene.add(disc);
      return disc;
    });
    this.model = null;
    this.url = null;
    this.resize();
  }

  clear() {
    if (this.model) {
      this.scene.remove(this.model);
      this.model.traverse((o) => { if (o.geometry) o.geometry.dispose(); if (o.material) o.material.dispose(); });
    }
    this.model = this.mixer = this.extras = this.root = this.url = null;
    this.followed = false;
    this.feet = [];
    this.discs.forEach((d) => { d.visible = false; });
    delete this.container.dataset.glbLoaded;
  }

  async load(url) {
    if (url === this.url) return;
    this.clear();
    this.url = url;
    let gltf;
    try {
      gltf = await new GLTFLoader().loadAsync(url);
    } catch (err) {
      if (url === this.url) this.url = null;  // choosing it again tries again
      throw err;
    }
    if (url !== this.url) return;  // another track was chosen meanwhile
    const extras = gltf.scene.userData.posegraph;
    if (!extras || !gltf.animations.length) throw new Error("the GLB has no posegraph motion");
    // GLTFLoader sanitises node names (PropertyBinding); the original is kept in userData.name.
    const byName = (name) => {
      let found = null;
      gltf.scene.traverse((o) => { if (!found && o.isBone && (o.userData.name === name || o.name === name)) found = o; });
      return found;
    };
    this.root = byName(extras.joints[0]);
    this.feet = ["left", "right"].map((side) =>
      byName(extras.joints.find((n) => new RegExp(`^${side}_?foot$`, "i").test(n.replace(/^mixamorig:/, "")))));
    gltf.scene.traverse((o) => { if (o.isMesh) o.frustumCulled = false; });  // it walks off its bind-pose bounds
    this.model = gltf.scene;
    this.extras = extras;
    this.mixer = new THREE.AnimationMixer(gltf.scene);
    this.clip = gltf.animations[0];
    this.mixer.clipAction(this.clip).play();
    this.scene.add(gltf.scene);
    // Frame the person: the camera's distance from the person's size at the first frame (a skeleton
    // from random weights can be metres tall), kept afterwards as the user orbits and zooms.
    this.mixer.setTime(0);
    gltf.scene.updateMatrixWorld(true);
    const box = new THREE.Box3();
    gltf.scene.traverse((o) => { if (o.isBone) box.expandByPoint(o.getWorldPosition(new THREE.Vector3())); });
    const size = box.isEmpty() ? 1.8 : Math.max(1.0, ...box.getSize(new THREE.Vector3()).toArray());
    this.offset = new THREE.Vector3(0.35, 0.2, 1).normalize().multiplyScalar(size * 2.2);
    this.camera.far = Math.max(200, size * 50);
    this.camera.updateProjectionMatrix();
    this.lookHeight = box.isEmpty() ? 0.9 : Math.max(0.3, (box.min.y + box.max.y) / 2 - box.min.y);
    this.container.dataset.glbLoaded = "1";
    this.container.dataset.samples = String(extras.frame_index.length);
  }

  // f: the player's frame (fractional, in processed frames). Between two of the track's samples the
  // animation interpolates; outside the track's first and last frame the person is hidden.
  show(f) {
    if (!this.model) return;
    const frames = this.extras.frame_index, n = frames.length;
    const inside = f >= frames[0] - 0.5 && f <= frames[n - 1] + 0.5;
    this.model.visible = inside;
    let contacts = 0;
    if (inside) {
      const g = Math.min(Math.max(f, frames[0]), frames[n - 1]);
      let k = 0;
      while (k + 1 < n && frames[k + 1] <= g) k++;
      const frac = k + 1 < n ? (g - frames[k]) / (frames[k + 1] - frames[k]) : 0;
      const time = Math.min((k + frac) / this.extras.fps, this.clip.duration);
      this.mixer.setTime(time);
      this.model.updateMatrixWorld(true);
      const sample = Math.min(n - 1, Math.round(k + frac));
      const planted = [this.extras.contacts.left[sample], this.extras.contacts.right[sample]];
      this.feet.forEach((foot, i) => {
        const disc = this.discs[i];
        disc.visible = !!(foot && planted[i]);
        if (!disc.visible) return;
        const p = foot.getWorldPosition(new THREE.Vector3());
        disc.position.set(p.x, 0.003, p.z);
        contacts += 1;
      });
      this.container.dataset.sample = String(sample);
      this.container.dataset.frame = String(frames[sample]);
    } else {
      this.discs.forEach((d) => { d.visible = false; });
    }
    if (this.root) {
      // The camera follows the root, keeping the user's orbit (the offset from target to camera).
      const p = this.root.getWorldPosition(new THREE.Vector3());
      const target = new THREE.Vector3(p.x, this.lookHeight, p.z);
      if (this.followed) this.offset.subVectors(this.camera.position, this.controls.target);
      this.followed = true;
      this.controls.target.copy(target);
      this.camera.position.copy(target).add(this.offset);
      this.controls.update();
      this.container.dataset.rootX = p.x.toFixed(4);
      this.container.dataset.rootZ = p.z.toFixed(4);
    }
    this.container.dataset.visible = inside ? "1" : "0";
    this.container.dataset.contacts = String(contacts);
    this.render();
  }
}

function motionView() {
  let container = $("#job-motion");
  if (!container) {  // a third figure beside the video and the per-frame 3D view
    const figure = document.createElement("figure");
    figure.innerHTML = '<div id="job-motion" class="three" aria-label="the chosen track\'s motion (GLB) over the floor"></div>' +
      '<figcaption id="job-motion-label">Motion</figcaption>';
    $("#job-player .media").appendChild(figure);
    container = $("#job-motion");
  }
  if (!THREE || !GLTFLoader) {
    container.innerHTML = '<p class="unavailable">Motion view unavailable: three.js\'s GLTFLoader is not vendored (run scripts/vendor-ui.sh).</p>';
    return null;
  }
  if (!container._view) container._view = new MotionView(container);
  return container._view;
}

// Load the chosen track's GLB into the motion view (once the player is up), then follow the video.
async function loadMotion() {
  const trackId = jobState.motionTrack;
  if (!jobState.base || !jobState.frames || trackId === null || trackId === undefined) return;
  const view = motionView();
  if (!view) return;
  $("#job-motion-label").textContent = `Motion: track ${trackId} (loading…)`;
  try {
    await view.load(`${jobState.base}/tracks/${trackId}.glb`);
  } catch (err) {
    $("#job-motion-label").textContent = `Motion: track ${trackId}: ${err.message}`;
    return;
  }
  if (jobState.motionTrack !== trackId) return;
  $("#job-motion-label").textContent = `Motion: track ${trackId} (GLB; floor grid 0.5 m; discs: feet planted)`;
  followMotion();
}

function followMotion() {
  const view = $("#job-motion") && $("#job-motion")._view;
  if (!view || !jobState.fps) return;
  view.show($("#job-video").currentTime * jobState.fps - 0.5);  // frame k is shown from k / fps to (k + 1) / fps
}

// ---- 2D overlay -------------------------------------------------------------------------------------
function drawPhoto(canvas, bitmap, persons) {
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  const scale = Math.max(2, Math.round(Math.max(bitmap.width, bitmap.height) / 320));
  const left = new Set(META.coco_left);
  persons.forEach((p, i) => {
    const color = "#" + PERSON_COLORS[i % PERSON_COLORS.length].toString(16).padStart(6, "0");
    const [x1, y1, x2, y2] = p.bbox;
    ctx.lineWidth = scale;
    ctx.strokeStyle = color;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillStyle = color;
    ctx.font = `${6 * scale}px system-ui`;
    ctx.fillText(`person ${i} · ${(p.score * 100).toFixed(0)}%`, x1 + scale, y1 - 2 * scale);
    if (!p.keypoints2d) return;
    for (const [a, b] of META.coco_skeleton) {
      const pa = p.keypoints2d[a], pb = p.keypoints2d[b];
      ctx.strokeStyle = left.has(a) || left.has(b) ? "#ff9f1c" : color;
      ctx.lineWidth = 1.5 * scale;
      ctx.beginPath(); ctx.moveTo(pa[0], pa[1]); ctx.lineTo(pb[0], pb[1]); ctx.stroke();
    }
    ctx.fillStyle = "#ffffff";
    for (const [x, y] of p.keypoints2d) { ctx.beginPath(); ctx.arc(x, y, 1.5 * scale, 0, 2 * Math.PI); ctx.fill(); }
  });
  canvas.dataset.persons = String(persons.length);
}

// ---- the photo form ---------------------------------------------------------------------------------
async function onPhoto(event) {
  event.preventDefault();
  banner(null);
  const file = $("#photo-file").files[0];
  if (!file) { banner("Choose a photo first."); return; }
  const button = event.submitter || $("#photo-form button");
  button.disabled = true; $("#photo-busy").hidden = false;
  try {
    const form = new FormData();
    form.append("file", file);
    const doc = await api("/api/photo", { method: "POST", body: form });
    const bitmap = await createImageBitmap(file);
    const persons = doc.persons || [];
    $("#photo-result").hidden = false;
    drawPhoto($("#photo-canvas"), bitmap, persons);
    photoState.persons = persons;
    const select = $("#photo-person");
    select.replaceChildren(new Option(`all ${persons.length} persons`, "all"),
      ...persons.map((p, i) => new Option(`person ${i} (${(p.score * 100).toFixed(0)}%)`, String(i))));
    select.parentElement.hidden = persons.length < 2;
    const view = make3D($("#photo-3d"));
    if (view) view.fitted = null;
    showPhotoPersons("all");
    const stages = Object.entries(doc.stages || {}).map(([k, v]) => `${k} ${Math.round(v.ms)} ms`).join(", ");
    $("#photo-summary").textContent = `${doc.filename}: ${persons.length} person${persons.length === 1 ? "" : "s"} ` +
      `in ${Math.round(doc.elapsed_ms)} ms (${stages}).`;
    if (doc.random_weights) {
      banner("These models run on RANDOM weights (no checkpoints were downloaded): the skeletons are noise, not results. `posegraph models fetch` gets the real ones.", "warn");
    }
  } catch (err) {
    banner(`Photo: ${err.message}`);
  } finally {
    button.disabled = false; $("#photo-busy").hidden = true;
  }
}

const photoState = { persons: [] };

function showPhotoPersons(which) {
  const view = make3D($("#photo-3d"));
  if (!view) return;
  const chosen = photoState.persons.map((p, i) => ({ k3: p.keypoints3d, color: PERSON_COLORS[i % PERSON_COLORS.length] }))
    .filter((_, i) => which === "all" || String(i) === which);
  view.fitted = null;
  view.set(chosen);
}

// ---- the video form ---------------------------------------------------------------------------------
async function onVideo(event) {
  event.preventDefault();
  banner(null);
  const file = $("#video-file").files[0];
  const uri = $("#video-uri").value.trim();
  if (!file && !uri) { banner("Choose a video to upload, or give an s3:// or https:// URI."); return; }
  if (file && file.size > META.max_upload_mb * 1e6) {
    banner(`${file.name} is ${(file.size / 1e6).toFixed(1)} MB; the limit is ${Math.round(META.max_upload_mb)} MB.`);
    return;
  }
  const form = new FormData();
  if (file) form.append("file", file); else form.append("uri", uri);
  form.append("stride", $("#video-stride").value || "1");
  if ($("#video-max").value) form.append("max_frames", $("#video-max").value);
  form.append("detect_every", $("#video-detect-every").value || "1");
  const button = event.submitter || $("#video-form button");
  button.disabled = true; $("#video-busy").hidden = false;
  try {
    const created = await api("/api/jobs", { method: "POST", body: form });
    $("#video-form").reset();
    location.hash = `#/jobs/${encodeURIComponent(created.job_id)}`;
  } catch (err) {
    banner(`Video: ${err.message}`);
  } finally {
    button.disabled = false; $("#video-busy").hidden = true;
  }
}

// ---- the job list -----------------------------------------------------------------------------------
const FINISHED = new Set(["succeeded", "failed", "partial"]);

function framesDone(job) {
  return (job.frames_done || 0) + (job.frames_failed || 0);
}

function progressText(job) {
  return job.frames_total ? `${framesDone(job)} / ${job.frames_total} frames` : `${framesDone(job)} frames`;
}

async function refreshJobs() {
  let data;
  try { data = await api("/api/jobs"); } catch (err) { banner(`Jobs: ${err.message}`); return; }
  const tbody = $("#jobs tbody");
  tbody.replaceChildren();
  $("#jobs-empty").hidden = data.jobs.length > 0;
  for (const job of data.jobs) {
    const tr = document.createElement("tr");
    tr.dataset.jobId = job.job_id;
    tr.dataset.status = job.status;
    const total = job.frames_total || 0, done = framesDone(job);
    const error = job.error ? `<div class="error">${escapeHtml(job.error)}</div>` :
      (job.launcher && job.launcher.message ? `<div class="hint">${escapeHtml(job.launcher.message)}</div>` : "");
    tr.innerHTML = `<td><a href="#/jobs/${encodeURIComponent(job.job_id)}">${escapeHtml(job.params?.filename || job.job_id)}</a>
        <div class="hint">${escapeHtml(job.job_id)}</div></td>
      <td><span class="status ${job.status}">${job.status}</span>${error}</td>
      <td><progress max="${total || 1}" value="${total ? done : 0}"></progress><div class="hint">${progressText(job)}</div></td>
      <td>${job.persons ?? 0}</td><td>${job.tracks ?? 0}</td>
      <td class="hint">${(job.created_at || "").replace("T", " ").slice(0, 19)}</td>
      <td>${job.random_weights ? '<span class="status partial" title="random weights">random weights</span>' : ""}</td>`;
    tbody.appendChild(tr);
  }
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// ---- one job ----------------------------------------------------------------------------------------
const jobState = { id: null, frames: null, fps: null, loaded: false, angles: null, frameIndex: null,
                   base: null, motionTrack: null };

async function showJob(jobId) {
  if (jobState.id !== jobId) {
    Object.assign(jobState, { id: jobId, frames: null, fps: null, loaded: false, base: null, motionTrack: null });
    const old = $("#job-motion") && $("#job-motion")._view;
    if (old) old.clear();
  }
  let job;
  try { job = await api(`/api/jobs/${encodeURIComponent(jobId)}`); } catch (err) { banner(`Job: ${err.message}`); return; }
  $("#job-title").textContent = `${job.params?.filename || job.video_uri} — ${job.job_id}`;
  $("#job-status").innerHTML = `<span class="status ${job.status}" id="job-phase">${job.status}</span> ` +
    `${progressText(job)} · ${job.persons || 0} persons · ${job.tracks || 0} tracks` +
    (job.launcher && job.launcher.message ? ` · ${escapeHtml(job.launcher.message)}` : "");
  const progress = $("#job-progress");
  progress.max = job.frames_total || 1;
  progress.value = job.frames_total ? framesDone(job) : 0;
  $("#job-error").hidden = !job.error;
  $("#job-error").textContent = job.error || "";
  if (job.random_weights) banner("This job ran on RANDOM weights: its poses are noise, not results.", "warn");
  if (FINISHED.has(job.status)) {
    clearInterval(timer);  // a finished job no longer changes: stop asking
    if (!jobState.loaded) {
      jobState.loaded = true;
      await loadPlayer(job);
    }
  }
}

async function loadPlayer(job) {
  const downloads = $("#download-list");
  downloads.replaceChildren();
  const link = (list, href, text) => {
    const li = document.createElement("li");
    li.innerHTML = `<a href="${href}" download>${escapeHtml(text)}</a>`;
    list.appendChild(li);
  };
  const base = `/api/jobs/${encodeURIComponent(job.job_id)}`;
  link(downloads, `${base}/frames.jsonl`, "Frame documents (JSON Lines)");
  link(downloads, `${base}/angles.csv`, "Joint angles of every track (CSV, degrees)");
  if ((job.track_list || []).some((t) => (t.results?.reps || []).length)) {
    link(downloads, `${base}/reps.csv`, "Repetitions of every track (CSV: depth, tempo, symmetry, lean, feedback)");
  }
  // Longest tracks first; a long tail (short tracks, e.g. from random weights) folds away.
  const tracks = [...(job.track_list || [])].sort((a, b) => b.frames - a.frames || a.track_id - b.track_id);
  const trackItem = (list, t) => {
    const li = document.createElement("li");
    const frames = `${t.frames} frame${t.frames === 1 ? "" : "s"}`;
    li.innerHTML = `Track ${t.track_id} (${frames}${t.lifted ? "" : ", not lifted to 3D"}): ` +
      `<a href="${base}/tracks/${t.track_id}.csv" download>keypoints CSV</a>` +
      // BVH needs rotations between frames: two frames with 3D at least.
      (t.lifted && t.frames >= 2 ? ` · <a href="${base}/tracks/${t.track_id}.bvh" download>BVH (Blender, Maya, Unity)</a>` +
        ` · <a href="${base}/tracks/${t.track_id}.glb" download>GLB (glTF)</a>` +
        ` · <a href="${base}/tracks/${t.track_id}.glb?lock_feet=1" download="${escapeHtml(job.job_id)}-track${t.track_id}-feet-locked.glb">GLB, feet locked</a>` +
        ` · <a href="${base}/tracks/${t.track_id}.fbx" download title="converted by Blender on the server: takes a few seconds">FBX (Unity, Unreal)</a>` : "");
    list.appendChild(li);
  };
  tracks.slice(0, 12).forEach((t) => trackItem(downloads, t));
  if (tracks.length > 12) {
    const more = document.createElement("details");
    more.innerHTML = `<summary>${tracks.length - 12} more tracks</summary><ul></ul>`;
    const list = more.querySelector("ul");
    tracks.slice(12).forEach((t) => trackItem(list, t));
    const li = document.createElement("li");
    li.appendChild(more);
    downloads.appendChild(li);
  }
  await loadAngles(base, tracks.filter((t) => t.lifted && t.frames >= 2));
  $("#job-downloads").hidden = false;
  if (!(job.outputs && job.outputs.overlay)) return;
  const data = await api(`${base}/frames`);
  jobState.frames = data.frames;
  jobState.fps = job.video_fps || 25;
  jobState.base = base;
  $("#job-player").hidden = false;
  const video = $("#job-video");
  video.src = `${base}/video`;
  const scrub = $("#job-scrub");
  scrub.max = String(Math.max(0, jobState.frames.length - 1));
  showFrame(0);
  await loadMotion();
}

// ---- joint angles beside the player -------------------------------------------------------------------
const ANGLE_LINES = [
  ["left_knee", "#4cc9f0"], ["right_knee", "#118ab2"], ["left_hip", "#06d6a0"], ["right_hip", "#2a9d8f"],
  ["left_elbow", "#f72585"], ["right_elbow", "#b5179e"], ["trunk_lean", "#f8961e"],
];

async function loadAngles(base, tracks) {
  const card = $("#job-angles-card"), select = $("#job-angles-track");
  jobState.angles = null;
  card.hidden = !tracks.length;
  if (!tracks.length) return;
  select.replaceChildren(...tracks.map((t) => new Option(`track ${t.track_id} (${t.frames} frames)`, t.track_id)));
  select.onchange = async () => {
    jobState.motionTrack = Number(select.value);  // the motion view shows the same track
    loadMotion();
    try {
      jobState.angles = await api(`${base}/tracks/${select.value}/angles`);
    } catch (err) { banner(`Joint angles: ${err.message}`); return; }
    drawAngles(jobState.frameIndex ?? 0);
  };
  $("#job-angles-legend").innerHTML = ANGLE_LINES.map(([name, color]) =>
    `<span style="color:${color}">■</span> ${name.replace("_", " ")}`).join(" &nbsp; ") +
    " &nbsp; — degrees; 0 = straight limb / upright trunk; gaps: the track was not seen";
  await select.onchange();
}

function drawAngles(frameIndex) {
  const canvas = $("#job-angles"), data = jobState.angles;
  if (!data || !data.frames.length) return;
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height, pad = 28;
  const first = data.frames[0], last = data.frames[data.frames.length - 1];
  const x = (f) => pad + (w - 2 * pad) * (last > first ? (f - first) / (last - first) : 0.5);
  const y = (deg) => h - pad - (h - 2 * pad) * Math.min(deg, 180) / 180;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#d9dee8"; ctx.fillStyle = "#5c6577"; ctx.font = "11px system-ui"; ctx.lineWidth = 1;
  for (const deg of [0, 45, 90, 135, 180]) {
    ctx.beginPath(); ctx.moveTo(pad, y(deg)); ctx.lineTo(w - pad, y(deg)); ctx.stroke();
    ctx.fillText(`${deg}°`, 2, y(deg) + 4);
  }
  // Frames inside the track's span where it was not seen: grey bands (as in the exported plots).
  const step = (w - 2 * pad) / Math.max(1, last - first);
  ctx.fillStyle = "#eceff4";
  data.frames.forEach((f, i) => {
    if (i > 0 && f - data.frames[i - 1] > 1) ctx.fillRect(x(data.frames[i - 1]) + step / 2, pad / 2,
                                                           x(f) - x(data.frames[i - 1]) - step, h - 1.5 * pad);
  });
  for (const [name, color] of ANGLE_LINES) {
    ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 1.6; ctx.beginPath();
    let drawing = false;
    data.frames.forEach((f, i) => {
      const v = data.angles[name][i];
      if (v === null || v === undefined) { drawing = false; return; }  // a bone of no length
      if (!drawing) ctx.moveTo(x(f), y(v)); else ctx.lineTo(x(f), y(v));
      drawing = true;
    });
    ctx.stroke();
    data.frames.forEach((f, i) => {  // each observation as a dot: a 2-frame track is still visible
      const v = data.angles[name][i];
      if (v !== null && v !== undefined) ctx.fillRect(x(f) - 2, y(v) - 2, 4, 4);
    });
  }
  drawReps(ctx, data.reps || [], x, h, pad, frameIndex);
  // The player's frame: a cursor, and the values at it.
  const at = data.frames.indexOf(frameIndex);
  ctx.strokeStyle = "#1d2330"; ctx.lineWidth = 1.5;
  if (frameIndex >= first && frameIndex <= last) {
    ctx.beginPath(); ctx.moveTo(x(frameIndex), pad / 2); ctx.lineTo(x(frameIndex), h - pad); ctx.stroke();
  }
  ctx.fillStyle = "#1d2330";
  ctx.fillText(at >= 0 ? `frame ${frameIndex}: knees ${fmt(data.angles.left_knee[at])}° / ${fmt(data.angles.right_knee[at])}°, ` +
    `trunk lean ${fmt(data.angles.trunk_lean[at])}°` : `frame ${frameIndex}: track ${data.track_id} not seen`, pad, 12);
  canvas.dataset.frame = String(frameIndex);
}

const fmt = (v) => (v === null || v === undefined ? "–" : v.toFixed(0));

// Repetitions a track stage found (the form judge's reps): a band from start to end over the chart,
// green when every rule held, orange when one did not, numbered, the bottom marked; the rep under
// the cursor has its numbers and feedback written below the chart.
function drawReps(ctx, reps, x, h, pad, frameIndex) {
  let current = null;
  reps.forEach((rep) => {
    const ok = rep.ok !== false;
    ctx.fillStyle = ok ? "rgba(6, 214, 160, 0.16)" : "rgba(248, 150, 30, 0.20)";
    ctx.fillRect(x(rep.start_frame), pad / 2, Math.max(2, x(rep.end_frame) - x(rep.start_frame)), h - 1.5 * pad);
    ctx.strokeStyle = ok ? "#06a77d" : "#e07b00"; ctx.lineWidth = 1; ctx.setLineDash([3, 3]);
    ctx.beginPath(); ctx.moveTo(x(rep.bottom_frame), pad / 2); ctx.lineTo(x(rep.bottom_frame), h - pad); ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = ctx.strokeStyle; ctx.font = "bold 11px system-ui";
    ctx.fillText(String(rep.index ?? ""), x(rep.start_frame) + 3, h - pad - 4);
    ctx.font = "11px system-ui";
    if (frameIndex >= rep.start_frame && frameIndex <= rep.end_frame) current = rep;
  });
  const canvas = ctx.canvas;
  canvas.dataset.reps = String(reps.length);
  canvas.dataset.repsMarked = String(reps.filter((r) => r.start_frame !== undefined && r.end_frame !== undefined).length);
  const note = $("#job-reps");
  if (!note) return;
  note.hidden = !reps.length;
  note.textContent = !reps.length ? "" : current
    ? `rep ${current.index}: depth ${fmt(current.depth_deg)}°, down ${current.down_s} s, up ${current.up_s} s, ` +
      `symmetry ${fmt(current.symmetry_deg)}°, trunk lean ${fmt(current.trunk_lean_deg)}° — ` +
      ((current.feedback || []).join("; ") || "good form")
    : `${reps.length} repetitions (${jobState.angles?.exercise || "exercise"}): ` +
      `${reps.filter((r) => r.ok !== false).length} with good form; play or seek to one for its numbers`;
}

// The player's listeners, attached once: they read jobState, so every job page shares them.
function setupPlayer() {
  const video = $("#job-video"), scrub = $("#job-scrub");
  const follow = () => {
    if (!jobState.frames) return;
    showFrame(Math.min(jobState.frames.length - 1, Math.floor(video.currentTime * jobState.fps + 1e-3)));
    followMotion();
  };
  video.addEventListener("timeupdate", follow);
  video.addEventListener("seeked", follow);
  if (video.requestVideoFrameCallback) {
    const tick = () => { follow(); video.requestVideoFrameCallback(tick); };
    video.requestVideoFrameCallback(tick);
  }
  scrub.addEventListener("input", () => {
    if (!jobState.frames) return;
    video.pause();
    video.currentTime = (Number(scrub.value) + 0.5) / jobState.fps;
    showFrame(Number(scrub.value));
    followMotion();
  });
}

function showFrame(k) {
  if (!jobState.frames || !jobState.frames.length || k < 0) return;
  const frame = jobState.frames[k];
  $("#job-scrub").value = String(k);
  const tracks = frame.p.filter((p) => p.k3);
  $("#job-frame-label").textContent = `frame ${frame.i} (${(frame.t ?? 0).toFixed(2)} s): ` +
    (frame.ok ? `${frame.p.length} person${frame.p.length === 1 ? "" : "s"}` : "failed");
  const view = make3D($("#job-3d"));
  if (view) view.set(tracks.map((p) => ({ k3: p.k3, color: PERSON_COLORS[(p.track ?? 0) % PERSON_COLORS.length] })));
  $("#job-3d").dataset.frame = String(frame.i);
  jobState.frameIndex = frame.i;
  drawAngles(frame.i);
}

// ---- live camera: frames over a WebSocket, poses back -------------------------------------------------
// One frame in flight: the next is captured when the answer to the last one has come, so a slow
// server means fewer frames a second, never a queue (the server drops nothing; the page waits).
const live = { ws: null, stream: null, sent: new Map(), next: 0, done: [], latencies: [], frames: 0, last: null };
const LIVE_WIDTH = 640;

function liveStats() {
  const now = performance.now();
  live.done = live.done.filter((t) => now - t < 2000);
  const fps = live.done.length / 2;
  const recent = live.latencies.slice(-60).sort((a, b) => a - b);
  const pct = (q) => (recent.length ? recent[Math.min(recent.length - 1, Math.floor(q * recent.length))] : null);
  const last = live.last;
  const ms = last ? Object.entries(last.ms).map(([k, v]) => `${k} ${Math.round(v)} ms`).join(", ") : "";
  $("#live-stats").textContent = `${fps.toFixed(1)} frames/s · latency p50 ${fmt(pct(0.5))} ms, p95 ${fmt(pct(0.95))} ms` +
    ` · ${live.frames} frames` + (last ? ` · ${last.p.length} person${last.p.length === 1 ? "" : "s"}` : "") +
    (ms ? ` (${ms}${last.detected ? "" : ", boxes from the last keypoints"})` : "");
  const el = $("#live-stats");
  el.dataset.frames = String(live.frames);
  el.dataset.fps = fps.toFixed(2);
  el.dataset.p95 = String(pct(0.95) ?? "");
}

function drawLive(frame) {
  const canvas = $("#live-canvas");
  canvas.width = frame.w; canvas.height = frame.h;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, frame.w, frame.h);
  const left = new Set(META.coco_left);
  frame.p.forEach((p) => {
    const color = "#" + PERSON_COLORS[(p.track ?? 0) % PERSON_COLORS.length].toString(16).padStart(6, "0");
    const [x1, y1, x2, y2] = p.box;
    ctx.lineWidth = 2; ctx.strokeStyle = color; ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillStyle = color; ctx.font = "14px system-ui";
    ctx.fillText(`track ${p.track ?? "?"}`, x1 + 2, y1 - 4);
    if (!p.k2) return;
    ctx.lineWidth = 3;
    for (const [a, b] of META.coco_skeleton) {
      ctx.strokeStyle = left.has(a) || left.has(b) ? "#ff9f1c" : color;
      ctx.beginPath(); ctx.moveTo(p.k2[a][0], p.k2[a][1]); ctx.lineTo(p.k2[b][0], p.k2[b][1]); ctx.stroke();
    }
    ctx.fillStyle = "#ffffff";
    for (const [x, y] of p.k2) { ctx.beginPath(); ctx.arc(x, y, 3, 0, 2 * Math.PI); ctx.fill(); }
  });
  canvas.dataset.persons = String(frame.p.length);
  canvas.dataset.frame = String(frame.i);
  const view = make3D($("#live-3d"));
  if (view) view.set(frame.p.filter((p) => p.k3).map((p) => ({ k3: p.k3, color: PERSON_COLORS[(p.track ?? 0) % PERSON_COLORS.length] })));
}

async function sendLiveFrame() {
  const video = $("#live-video");
  if (!live.ws || live.ws.readyState !== WebSocket.OPEN || !video.videoWidth) return;
  const scale = Math.min(1, LIVE_WIDTH / video.videoWidth);
  const grab = document.createElement("canvas");
  grab.width = Math.round(video.videoWidth * scale); grab.height = Math.round(video.videoHeight * scale);
  grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
  const blob = await new Promise((resolve) => grab.toBlob(resolve, "image/jpeg", 0.8));
  live.sent.set(live.next++, performance.now());   // the server numbers a socket's frames from 0 too
  live.ws.send(await blob.arrayBuffer());
}

function onLiveMessage(event) {
  const answer = JSON.parse(event.data);
  if (answer.error) banner(`Live: ${answer.error}`, answer.received === undefined ? "error" : "warn");
  if (answer.detect_every !== undefined) { sendLiveFrame(); return; }   // the session is ready
  const now = performance.now();
  for (const frame of answer.ready || []) {
    const t0 = live.sent.get(frame.i);
    live.sent.delete(frame.i);
    if (t0 !== undefined) live.latencies.push(now - t0);
    live.done.push(now);
    live.frames += 1;
    live.last = frame;
    if (frame.random_weights) banner("These models run on RANDOM weights (no checkpoints were downloaded): the skeletons are noise, not results. `posegraph models fetch` gets the real ones.", "warn");
    requestAnimationFrame(() => drawLive(frame));
  }
  if (answer.error && answer.received !== undefined) live.sent.delete(answer.received);   // that frame failed
  liveStats();
  sendLiveFrame();
}

async function startLive(event) {
  event.preventDefault();
  banner(null);
  const every = $("#live-detect-every").value || "5";
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    banner(`Camera: ${err.message || err.name}. Allow this page to use the camera, or plug one in.`);
    return;
  }
  const video = $("#live-video");
  video.srcObject = live.stream;
  await video.play();
  Object.assign(live, { sent: new Map(), next: 0, done: [], latencies: [], frames: 0, last: null });
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  live.ws = new WebSocket(`${scheme}://${location.host}/api/live?detect_every=${encodeURIComponent(every)}`);
  live.ws.onmessage = onLiveMessage;
  live.ws.onclose = (e) => {
    if (live.ws && e.code !== 1000) banner(`Live: the connection closed (${e.reason || "code " + e.code}).`);
    stopLive();
  };
  $("#live-start").disabled = true; $("#live-stop").disabled = false;
  $("#live-3d").dataset.live = "1";
}

function stopLive() {
  const ws = live.ws;
  live.ws = null;
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
  live.stream = null;
  $("#live-start").disabled = false; $("#live-stop").disabled = true;
}

// ---- routing and polling ----------------------------------------------------------------------------
let timer = null;

function route() {
  clearInterval(timer);
  const match = location.hash.match(/^#\/jobs\/(.+)$/);
  const isLive = location.hash === "#/live";
  $("#view-home").hidden = !!match || isLive;
  $("#view-job").hidden = !match;
  $("#view-live").hidden = !isLive;
  if (!isLive && live.ws) stopLive();
  if (isLive) {
    make3D($("#live-3d"));
  } else if (match) {
    const id = decodeURIComponent(match[1]);
    showJob(id);
    timer = setInterval(() => showJob(id), 1000);
  } else {
    refreshJobs();
    timer = setInterval(refreshJobs, 1500);
  }
}

async function main() {
  try {
    META = await api("/api/meta");
  } catch (err) {
    banner(err.message);
    return;
  }
  $("#mode").textContent = META.mode === "kubernetes" ? "cluster: videos become PoseJobs" : "embedded: local graph and job runner";
  $("#upload-hint").textContent = `Uploads up to ${Math.round(META.max_upload_mb)} MB. MP4, MOV, MKV, WebM or AVI.`;
  if (META.three) {
    try {
      THREE = await import("three");
      ({ OrbitControls } = await import("/static/vendor/OrbitControls.js"));
      try {  // the motion view's loader (vendored since three's GLTF stamp); without it, that view says so
        ({ GLTFLoader } = await import("/static/vendor/loaders/GLTFLoader.js"));
      } catch (err) {
        GLTFLoader = null;
      }
      $("#footer-three").textContent = `3D view: three.js r${THREE.REVISION}.`;
    } catch (err) {
      THREE = null;
      banner(`3D view unavailable: ${err.message}`, "warn");
    }
  }
  $("#photo-form").addEventListener("submit", onPhoto);
  $("#photo-person").addEventListener("change", (e) => showPhotoPersons(e.target.value));
  $("#video-form").addEventListener("submit", onVideo);
  $("#live-form").addEventListener("submit", startLive);
  $("#live-stop").addEventListener("click", stopLive);
  setupPlayer();
  window.addEventListener("hashchange", route);
  document.body.dataset.ready = "1";
  route();
}

main();
